"""The encoder registry: every encoder loads a tiny real model of its architecture through
`from_pretrained` (as a hub checkpoint would) and returns unit, float32, deterministic vectors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fashion_recs.errors import FashionRecsError
from fashion_recs.similar.encoders import (
    ENCODERS,
    Encoder,
    EncoderError,
    EncoderUnavailable,
    encoder_available,
    load_encoder,
)

IMAGE_ENCODERS = [name for name, spec in ENCODERS.items() if "image" in spec.modalities]
TEXT_ENCODERS = [name for name, spec in ENCODERS.items() if "text" in spec.modalities]
TEXTS = ["red midi dress", "blue leather boots", "green cotton shirt", "a", "denim " * 40]


@pytest.fixture(scope="module")
def encoders(tiny_sources: dict[str, str | dict[str, str]]) -> dict[str, Encoder]:
    """Pinned to the CPU so that exact-equality checks hold on a machine with a GPU too."""
    return {
        name: load_encoder(name, tiny_sources[name], device="cpu", batch_size=64)
        for name in ENCODERS
    }


def images() -> list[Image.Image]:
    """Solid colours and shapes, in several sizes and aspect ratios."""
    red = Image.new("RGB", (48, 64), (200, 30, 30))
    blue = Image.new("RGB", (64, 48), (20, 40, 190))
    square = Image.new("RGB", (40, 40), "black")
    ImageDraw.Draw(square).rectangle([8, 8, 31, 31], fill="white")
    circle = Image.new("RGB", (56, 56), (240, 240, 230))
    ImageDraw.Draw(circle).ellipse([6, 6, 50, 50], fill=(30, 150, 60))
    stripes = Image.new("RGB", (32, 80), "white")
    for y in range(0, 80, 10):
        ImageDraw.Draw(stripes).rectangle([0, y, 31, y + 4], fill="navy")
    return [red, blue, square, circle, stripes]


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def assert_all_different(vectors: np.ndarray) -> None:
    cosines = vectors @ vectors.T
    off_diagonal = cosines[~np.eye(len(vectors), dtype=bool)]
    assert off_diagonal.max() < 1 - 1e-4


def test_registry_names_modalities_and_default_sources() -> None:
    assert list(ENCODERS) == [
        "mobilenet_v2",
        "clip",
        "fashion_clip",
        "align",
        "roberta_efficientnet",
    ]
    assert ENCODERS["mobilenet_v2"].modalities == ("image",)
    assert all(set(ENCODERS[n].modalities) == {"image", "text"} for n in TEXT_ENCODERS)
    assert ENCODERS["mobilenet_v2"].default_source == "google/mobilenet_v2_1.0_224"
    assert ENCODERS["clip"].default_source == "openai/clip-vit-base-patch32"
    assert ENCODERS["fashion_clip"].default_source == "patrickjohncyh/fashion-clip"
    assert ENCODERS["align"].default_source == "kakaobrain/align-base"
    assert ENCODERS["roberta_efficientnet"].default_source == {
        "text": "FacebookAI/roberta-large",
        "image": "google/efficientnet-b5",
    }
    joint = {name for name, spec in ENCODERS.items() if spec.joint_space}
    assert joint == {"clip", "fashion_clip", "align"}


@pytest.mark.parametrize("name", IMAGE_ENCODERS)
def test_image_embeddings_are_unit_float32_deterministic_and_distinct(
    encoders: dict[str, Encoder], name: str
) -> None:
    encoder = encoders[name]
    first = encoder.embed_images(images())
    assert_unit_rows(first, 5, encoder.dims["image"])
    assert_all_different(first)
    np.testing.assert_array_equal(encoder.embed_images(images()), first)


@pytest.mark.parametrize("name", TEXT_ENCODERS)
def test_text_embeddings_are_unit_float32_deterministic_and_distinct(
    encoders: dict[str, Encoder], name: str
) -> None:
    encoder = encoders[name]
    first = encoder.embed_texts(TEXTS)
    assert_unit_rows(first, len(TEXTS), encoder.dims["text"])
    assert_all_different(first)
    np.testing.assert_array_equal(encoder.embed_texts(TEXTS), first)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_small_batches_give_the_same_vectors_as_one_batch(
    encoders: dict[str, Encoder], tiny_sources: dict[str, str | dict[str, str]], name: str
) -> None:
    small = load_encoder(name, tiny_sources[name], device="cpu", batch_size=2)
    whole = encoders[name]
    if "image" in small.modalities:
        # Convolutions may pick another CPU kernel for another batch size: float32 noise of
        # about 1e-5 on unit vectors, far below any difference that changes a ranking.
        np.testing.assert_allclose(
            small.embed_images(images()), whole.embed_images(images()), atol=5e-5
        )
    if "text" in small.modalities:
        # Batches pad to different lengths; the attention mask must make that invisible.
        np.testing.assert_allclose(small.embed_texts(TEXTS), whole.embed_texts(TEXTS), atol=1e-5)


def test_a_repeated_item_in_one_batch_gets_the_same_vector(encoders: dict[str, Encoder]) -> None:
    vectors = encoders["clip"].embed_texts(["red midi dress", "blue boots", "red midi dress"])
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)


def test_greyscale_and_rgba_images_are_embedded_as_rgb(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["mobilenet_v2"]
    grey = images()[2].convert("L")
    rgba = images()[3].convert("RGBA")
    vectors = encoder.embed_images([grey, rgba])
    expected = encoder.embed_images([grey.convert("RGB"), rgba.convert("RGB")])
    np.testing.assert_array_equal(vectors, expected)


def test_empty_input_gives_an_empty_matrix(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["clip"]
    assert encoder.embed_images([]).shape == (0, encoder.dim)
    assert encoder.embed_texts([]).dtype == np.float32


def test_joint_space_encoders_share_one_width(encoders: dict[str, Encoder]) -> None:
    for name in ("clip", "fashion_clip", "align"):
        encoder = encoders[name]
        assert encoder.dims == {"image": encoder.dim, "text": encoder.dim}
        similarity = encoder.embed_images(images()[:1]) @ encoder.embed_texts(TEXTS[:1]).T
        assert similarity.shape == (1, 1)


def test_roberta_efficientnet_has_two_sources_and_no_single_width(
    encoders: dict[str, Encoder], tiny_sources: dict[str, str | dict[str, str]]
) -> None:
    encoder = encoders["roberta_efficientnet"]
    paths = tiny_sources["roberta_efficientnet"]
    assert isinstance(paths, dict)
    assert encoder.sources == paths
    assert encoder.model_id == f"text={paths['text']}; image={paths['image']}"
    assert encoder.dims == {"text": 16, "image": 64}
    with pytest.raises(EncoderError, match="dims"):
        _ = encoder.dim
    with pytest.raises(EncoderError, match="pairs two models"):
        load_encoder("roberta_efficientnet", paths["text"])
    with pytest.raises(EncoderError, match="keyed by text, image"):
        load_encoder("roberta_efficientnet", {"txt": paths["text"]})


def test_unsupported_modality_raises(encoders: dict[str, Encoder]) -> None:
    with pytest.raises(EncoderError, match=r"embeds images only.*clip, fashion_clip, align"):
        encoders["mobilenet_v2"].embed_texts(["red dress"])


def test_wrong_input_types_raise(encoders: dict[str, Encoder]) -> None:
    with pytest.raises(EncoderError, match="not a string"):
        encoders["clip"].embed_texts(["red dress", None])  # type: ignore[list-item]
    with pytest.raises(EncoderError, match="not a PIL image"):
        encoders["clip"].embed_images([np.zeros((8, 8, 3))])  # type: ignore[list-item]


def test_unknown_encoder_name_raises_with_the_known_names() -> None:
    with pytest.raises(EncoderError, match=r"Unknown encoder 'resnet'.*mobilenet_v2, clip"):
        load_encoder("resnet")
    with pytest.raises(EncoderError, match="Unknown encoder"):
        encoder_available("resnet")


@pytest.mark.parametrize("name", list(ENCODERS))
def test_missing_local_directory_raises_a_clear_error(tmp_path: Path, name: str) -> None:
    missing = str(tmp_path / "not-downloaded")
    source = {"text": missing, "image": missing} if name == "roberta_efficientnet" else missing
    with pytest.raises(EncoderUnavailable) as raised:
        load_encoder(name, source)
    message = str(raised.value)
    assert isinstance(raised.value, FashionRecsError)
    assert name in message
    assert missing in message
    assert "directory does not exist" in message
    assert "hf download" in message
    assert "set the encoder's source" in message
    assert "local_files_only=False" in message


def test_default_hub_model_not_in_the_cache_raises_a_clear_error() -> None:
    with pytest.raises(EncoderUnavailable) as raised:
        load_encoder("fashion_clip")
    message = str(raised.value)
    assert "fashion_clip" in message
    assert "'patrickjohncyh/fashion-clip'" in message
    assert "not in the local hub cache" in message
    assert "hf download patrickjohncyh/fashion-clip --local-dir DIR" in message


def test_encoder_available_reports_why_not(
    tmp_path: Path, tiny_sources: dict[str, str | dict[str, str]]
) -> None:
    ok, reason = encoder_available("clip", str(tmp_path / "missing"))
    assert not ok
    assert "clip" in reason
    assert "directory does not exist" in reason

    ok, reason = encoder_available("align")
    assert not ok
    assert "kakaobrain/align-base" in reason
    assert "hf download" in reason

    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(Path(str(tiny_sources["clip"])) / "config.json", config_only)
    ok, reason = encoder_available("clip", str(config_only))
    assert not ok
    assert "no weights file" in reason

    ok, reason = encoder_available("clip", str(tiny_sources["mobilenet_v2"]))
    assert not ok
    assert "'mobilenet_v2' model" in reason


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_available_for_a_saved_model(
    tiny_sources: dict[str, str | dict[str, str]], name: str
) -> None:
    ok, reason = encoder_available(name, tiny_sources[name])
    assert ok
    assert "found" in reason


def test_a_model_of_the_wrong_kind_is_refused(
    tiny_sources: dict[str, str | dict[str, str]],
) -> None:
    with pytest.raises(EncoderError, match="holds a 'clip' model but the align encoder needs"):
        load_encoder("align", tiny_sources["clip"])


def test_metadata_of_a_local_model(encoders: dict[str, Encoder]) -> None:
    for name, encoder in encoders.items():
        assert encoder.name == name
        assert encoder.modalities == ENCODERS[name].modalities
        assert isinstance(encoder.revision, str)
        assert encoder.revision.startswith(("sha256:", "text=sha256:"))
    assert encoders["clip"].revision == encoders["fashion_clip"].revision
    assert encoders["clip"].revision != encoders["align"].revision


def test_default_device_is_cuda_when_available(
    tiny_sources: dict[str, str | dict[str, str]],
) -> None:
    import torch

    encoder = load_encoder("clip", tiny_sources["clip"])
    assert encoder.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert encoder.embed_texts(TEXTS[:2]).shape == (2, encoder.dim)


def test_a_model_in_the_hub_cache_is_loaded_by_name_with_its_commit_as_revision(
    empty_hub_cache: Path, tiny_sources: dict[str, str | dict[str, str]]
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hub_cache / "models--tiny--mobilenet"
    shutil.copytree(str(tiny_sources["mobilenet_v2"]), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    assert encoder_available("mobilenet_v2", "tiny/mobilenet")[0]
    encoder = load_encoder("mobilenet_v2", "tiny/mobilenet", device="cpu")
    assert encoder.model_id == "tiny/mobilenet"
    assert encoder.revision == commit
    assert encoder.embed_images(images()[:2]).shape == (2, encoder.dim)


def test_progress_is_logged(
    tiny_sources: dict[str, str | dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    encoder = load_encoder("clip", tiny_sources["clip"], device="cpu", batch_size=1, log_every=2)
    with caplog.at_level(logging.INFO, logger="fashion_recs.similar.encoders"):
        encoder.embed_texts(TEXTS)
    progress = [r.getMessage() for r in caplog.records if "embedded" in r.getMessage()]
    assert [m.split(" texts")[0] for m in progress] == [
        "clip: embedded 2/5",
        "clip: embedded 4/5",
        "clip: embedded 5/5",
    ]
    assert all("texts/s" in m for m in progress)
