"""The encoder stage with tiny real models: lists per model, skipped encoders, quarantined
images, the embedding cache on reruns, and the fused TF-IDF + MobileNet model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from fashion_recs.artifacts import write_artifact
from fashion_recs.contract import PRODUCTS, PRODUCTS_SCHEMA, quarantine, similar_products
from fashion_recs.stages.embeddings import embeddings_artifact, encoders_stage
from tests.helpers import make_config, run_paths

N = 24
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 160, 60)]
KINDS = ["dress", "boots", "shirt"]


def draw(path: Path, i: int) -> None:
    image = Image.new("RGB", (40, 40), COLOURS[i % 3])
    pen = ImageDraw.Draw(image)
    pen.ellipse((5 + i % 5, 5, 30, 35), fill=(240, 240, 240))
    pen.line((0, i, 39, i), fill=(0, 0, 0))  # every photo different
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture
def export(tmp_path) -> tuple[Path, pa.Table]:
    base = tmp_path / "export"
    rows = []
    for i in range(N):
        images = [f"images/{i}.png"]
        if i == 0:
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "images" / "0.png").write_bytes(b"\x89PNG broken")
        elif i == 1:
            images = ["images/missing.png"]
        elif i == 2:
            images = []
        else:
            draw(base / images[0], i)
        rows.append(
            {
                "product_id": f"{i:024x}",
                "title": f"{KINDS[i % 3]} number {i}",
                "target_audience": "women",
                "color": ["red", "blue", "green"][i % 3],
                "group_key": f"{i:024x}",
                "department": KINDS[i % 3],
                "original_description": f"A {KINDS[i % 3]}.",
                "images": images,
            }
        )
    return base, pa.Table.from_pylist(rows, schema=PRODUCTS_SCHEMA)


def run(tmp_path, export, tiny_sources, run_id: str = "r1") -> tuple[dict, object]:
    base, table = export
    config = make_config(
        tmp_path,
        similar={
            "encoders": [
                {"name": "mobilenet_v2", "source": tiny_sources["mobilenet_v2"]},
                {"name": "clip", "source": tiny_sources["clip"]},
                {"name": "roberta_efficientnet", "source": tiny_sources["roberta_efficientnet"]},
                {"name": "align"},  # default hub name: not available here
                {"name": "fashion_clip", "enabled": False},
            ],
            "embedding_cache_dir": str(tmp_path / "cache" / "embeddings"),
            "images": {"cache_dir": str(tmp_path / "cache" / "images")},
            "top_k": 5,
            "image_robustness_sample": 6,
        },
    )
    paths = run_paths(config, run_id)
    products = write_artifact(paths, PRODUCTS, table)
    return encoders_stage(config, paths, products, base), paths


def test_models_lists_skips_and_quarantine(tmp_path, export, tiny_sources) -> None:
    summary, paths = run(tmp_path, export, tiny_sources)
    assert summary["models"] == ["clip", "mobilenet_v2", "roberta_efficientnet", "tfidf_mobilenet"]
    assert "align" in summary["skipped"] and "hf download" in summary["skipped"]["align"]
    assert summary["skipped"]["fashion_clip"] == "disabled in config"
    assert summary["images"]["quarantined"] == 2 and summary["images"]["no_image"] == 1
    bad = pd.read_parquet(paths.path(quarantine("images")))
    assert set(bad["reason"]) == {"unreadable_image", "missing_image_file"}
    assert set(bad["column"]) == {"images"}

    ids = [f"{i:024x}" for i in range(N)]
    mobilenet = pd.read_parquet(paths.path(similar_products("mobilenet_v2")))
    # Image only: the three products without a usable image have no vector and no list.
    assert set(mobilenet["product_id"]) == set(ids[3:])
    for model in ("clip", "roberta_efficientnet", "tfidf_mobilenet"):
        lists = pd.read_parquet(paths.path(similar_products(model)))
        assert set(lists["product_id"]) == set(ids), model  # text covers missing images
        assert lists.groupby("product_id").size().eq(5).all()
        assert (lists["product_id"] != lists["similar_product_id"]).all()
    vectors = pd.read_parquet(paths.path(embeddings_artifact("clip")))
    matrix = np.stack(vectors["vector"].to_numpy())
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    clip = summary["built"]["clip"]
    assert clip["revision"].startswith("sha256:") and clip["cache"]["image_embedded"] == N - 3
    assert {
        "robustness_image_crop_overlap@5",
        "robustness_image_flip_overlap@5",
        "robustness_image_color_jitter_overlap@5",
        "same_department@5",
    } <= set(clip["values"])
    assert "robustness_text_noise_overlap@5" in summary["built"]["roberta_efficientnet"]["values"]


def test_rerun_embeds_only_what_changed(tmp_path, export, tiny_sources) -> None:
    first, _ = run(tmp_path, export, tiny_sources, "r1")
    again, _ = run(tmp_path, export, tiny_sources, "r2")
    for model in ("mobilenet_v2", "clip"):
        assert again["built"][model]["cache"]["image_embedded"] == 0
        assert again["built"][model]["cache"]["image_hits"] == N - 3
    base, _ = export
    Image.new("RGB", (40, 40), (5, 5, 5)).save(base / "images" / "7.png")  # one new photo
    changed, _ = run(tmp_path, export, tiny_sources, "r3")
    assert changed["built"]["mobilenet_v2"]["cache"]["image_embedded"] == 1
    assert changed["built"]["clip"]["cache"]["text_embedded"] == 0
    assert first["built"]["clip"]["values"] == again["built"]["clip"]["values"]


def test_approximate_retrieval_reports_its_recall(tmp_path, export, tiny_sources) -> None:
    base, table = export
    config = make_config(
        tmp_path,
        similar={
            "encoders": [{"name": "clip", "source": tiny_sources["clip"]}],
            "fusions": [],
            "retrieval": {"method": "faiss_ivf"},
            "top_k": 5,
            "image_robustness_sample": 4,
        },
    )
    paths = run_paths(config)
    summary = encoders_stage(config, paths, write_artifact(paths, PRODUCTS, table), base)
    recall = summary["built"]["clip"]["values"]["recall_vs_exact_faiss_ivf@5"]
    assert 0 < recall <= 1
    vectors = pd.read_parquet(paths.path(embeddings_artifact("clip")))
    assert set(vectors["model"]) == {"clip"} and vectors["revision"].str.startswith("sha256:").all()
