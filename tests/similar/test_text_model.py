"""The seed's TF-IDF + one-hot text model and the similar-products stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from fashion_recs.artifacts import write_artifact
from fashion_recs.contract import PRODUCTS, PRODUCTS_SCHEMA, similar_metrics, similar_products
from fashion_recs.similar.retrieval import (
    AnnoyParams,
    annoy_neighbors,
    exact_neighbors,
    recall_at_k,
)
from fashion_recs.similar.text import combined_text, fit_text_model, noised_text, product_type
from fashion_recs.stages.similar import text_model_stage
from tests.helpers import make_config, run_paths

COLOURS = ["black", "navy", "red", "white", "olive"]
KINDS = [
    ("dresses", "midi dress"),
    ("shoes", "leather boots"),
    ("tops", "cotton tee"),
    ("jackets", "denim jacket"),
]


def catalogue(n: int = 200) -> pd.DataFrame:
    rows = []
    for i in range(n):
        dept, kind = KINDS[i % 4]
        colour = COLOURS[(i // 4) % 5]
        rows.append(
            {
                "product_id": f"{i:024x}",
                "title": f"{colour.title()} {kind.title()} {i}",
                "target_audience": "women" if i % 3 else "men",
                "color": colour if i % 17 else None,
                "group_key": f"{i:024x}",
                "department": dept,
                "original_description": f"A {colour} {kind} for every day.",
            }
        )
    return pd.DataFrame(rows)


def test_combined_text_joins_the_seed_columns_and_skips_missing() -> None:
    text = combined_text(catalogue(20))
    assert (
        text.iloc[1]
        == "Black Leather Boots 1 women black shoes A black leather boots for every day."
    )
    assert "  " not in text.iloc[0] and "<NA>" not in " ".join(text)


def test_vectors_are_normalised_and_blocks_weighted() -> None:
    products = catalogue()
    model = fit_text_model(products, max_features=50, attribute_weight=0.0)
    x = model.transform(products)
    assert np.allclose(np.sqrt(x.multiply(x).sum(axis=1)), 1.0, atol=1e-5)
    assert x.shape[1] == model.dim
    attributes_only = fit_text_model(products, text_weight=0.0).transform(products)
    same = (attributes_only[0] @ attributes_only.T).toarray().ravel()
    # Same colour, audience and department: identical attribute vectors.
    first = products.loc[0]
    twins = products.index[
        (products["color"] == first["color"])
        & (products["department"] == first["department"])
        & (products["target_audience"] == first["target_audience"])
    ]
    assert np.allclose(same[twins], 1.0, atol=1e-5)


def test_noised_text_is_deterministic_and_changes_text() -> None:
    text = combined_text(catalogue(30))
    a, b = noised_text(text, 0.3, seed=1), noised_text(text, 0.3, seed=1)
    assert a.equals(b) and not a.equals(text)
    assert noised_text(text, 0.0, seed=1).equals(text)


def run_stage(tmp_path, products: pd.DataFrame | None = None, **similar):
    config = make_config(tmp_path, similar=similar)
    paths = run_paths(config)
    products = catalogue() if products is None else products
    table = pa.Table.from_pandas(products, preserve_index=False)
    table = pa.Table.from_pylist(table.to_pylist(), schema=PRODUCTS_SCHEMA)
    products = write_artifact(paths, PRODUCTS, table)
    return config, paths, text_model_stage(config, paths, products)


def test_stage_writes_lists_for_every_product_and_metrics(tmp_path) -> None:
    _, paths, summary = run_stage(tmp_path)
    lists = pd.read_parquet(paths.path(similar_products("text_tfidf")))
    assert lists.groupby("product_id").size().eq(12).all() and lists["product_id"].nunique() == 200
    assert (lists["product_id"] != lists["similar_product_id"]).all()
    assert lists["is_default"].all() and (lists["model"] == "text_tfidf").all()
    metrics = pd.read_parquet(paths.path(similar_metrics("text_tfidf")))
    values = dict(zip(metrics["metric"], metrics["value"], strict=True))
    assert values["same_department"] > 0.9
    assert 0 <= values["recall_vs_exact_annoy"] <= 1
    assert 0 < values["robustness_text_noise_overlap"] <= 1
    assert (paths.run_dir / "06_models" / "indexes" / "text_tfidf.ann").is_file()
    assert summary["method"] == "exact"


def test_same_audience_keeps_neighbours_within_the_audience(tmp_path) -> None:
    _, paths, _ = run_stage(tmp_path, same_audience=True, retrieval={"method": "annoy"})
    lists = pd.read_parquet(paths.path(similar_products("text_tfidf")))
    audience = catalogue().set_index("product_id")["target_audience"]
    assert (lists["product_id"].map(audience) == lists["similar_product_id"].map(audience)).all()


def test_approximate_methods_report_recall_against_exact(tmp_path) -> None:
    _, _, summary = run_stage(tmp_path, retrieval={"method": "faiss_ivf"})
    assert summary["method"] == "faiss_ivf"
    assert 0 < summary["values"]["recall_vs_exact_faiss_ivf@12"] <= 1


def test_auto_searches_a_large_catalogue_through_ivf_and_says_how_well(tmp_path) -> None:
    """Above `exact_max_items` the sparse text vectors go through a faiss IVF index (exact
    search costs n^2), with recall against exact on a sample in the metrics; dense vectors
    past the size limit stay exact."""
    from fashion_recs.stages import similar as similar_stage

    config, _, summary = run_stage(tmp_path, retrieval={"exact_max_items": 150})
    assert summary["method"] == "faiss_ivf"
    assert summary["values"]["recall_vs_exact_faiss_ivf@12"] > 0.8
    small = make_config(tmp_path, similar={"retrieval": {"exact_max_items": 150}})
    wide = sp.random(200, 64, density=0.1, format="csr", random_state=0)
    assert similar_stage.retrieval_method(small, wide) == "faiss_ivf"
    original = similar_stage.DENSE_MAX_BYTES
    try:
        similar_stage.DENSE_MAX_BYTES = 200 * 64 * 4 - 1
        assert similar_stage.retrieval_method(small, wide) == "exact"
    finally:
        similar_stage.DENSE_MAX_BYTES = original
    assert similar_stage.retrieval_method(config, wide[:150]) == "exact"


def coarse_catalogue() -> pd.DataFrame:
    """Coarse departments hold several product types; the title's last word names the type."""
    kinds = {"tops": ["tee", "shirt", "hoodie"], "shoes": ["boots", "sandals", "sneakers"]}
    rows = []
    for i in range(240):
        dept = "tops" if i % 2 else "shoes"
        kind = kinds[dept][(i // 2) % 3]
        colour = COLOURS[(i // 6) % 5]
        material = ["cotton", "leather", "canvas", "linen"][(i // 30) % 4]
        rows.append(
            {
                "product_id": f"{i:024x}",
                "title": f"Brand{i % 7} Classic {material.title()} {kind.title()} 3",
                "target_audience": "women",
                "color": colour,
                "group_key": f"g{i // 5}",
                "department": dept,
                "original_description": f"{material} everyday",
            }
        )
    return pd.DataFrame(rows)


def test_product_type_token_from_the_title_separates_types_in_a_coarse_department() -> None:
    products = coarse_catalogue()
    kinds = products["title"].str.split().str[-2].str.lower()
    assert (product_type(products["title"]) == kinds).all()

    def type_precision(model) -> float:
        nb = exact_neighbors(model.transform(products), 10)
        return float((kinds.to_numpy()[nb.indices] == kinds.to_numpy()[:, None]).mean())

    plain = fit_text_model(products, text_weight=0.3)
    typed = fit_text_model(products, text_weight=0.3, product_type="last_word")
    assert type_precision(typed) > 0.95 > type_precision(plain)


def test_attribute_blocks_are_weighted_separately() -> None:
    products = coarse_catalogue()
    no_colour = fit_text_model(
        products,
        text_weight=0.0,
        attribute_weights={"color": 0.0, "product_type": 0.0},
        product_type="last_word",
    ).transform(products)
    colour_only = fit_text_model(
        products,
        text_weight=0.0,
        attribute_weights={"target_audience": 0.0, "department": 0.0, "product_type": 0.0},
        product_type="last_word",
    ).transform(products)
    colours = products["color"].to_numpy()
    departments = products["department"].to_numpy()
    # Without the colour block, colour plays no part; with only it, it is all that counts.
    without = (no_colour[0] @ no_colour.T).toarray().ravel()
    assert np.allclose(without[departments == departments[0]], 1.0, atol=1e-5)
    same = (colour_only[0] @ colour_only.T).toarray().ravel()
    assert np.allclose(same[colours == colours[0]], 1.0, atol=1e-5)
    assert np.allclose(same[colours != colours[0]], 0.0, atol=1e-5)


def test_consistency_is_reported_for_every_attribute(tmp_path) -> None:
    _, paths, _ = run_stage(tmp_path, products=coarse_catalogue())
    metrics = pd.read_parquet(paths.path(similar_metrics("text_tfidf")))
    names = set(metrics["metric"])
    assert {
        "same_department",
        "same_color",
        "same_target_audience",
        "same_group_key",
        "same_product_type",
    } <= names
    values = dict(zip(metrics["metric"], metrics["value"], strict=True))
    assert values["same_product_type"] > 0.9


def test_annoy_audit_asks_only_the_sample() -> None:
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(0, 300, 30)
    nb = annoy_neighbors(x, 5, AnnoyParams(n_trees=5), rows=rows)
    asked = np.zeros(300, dtype=bool)
    asked[rows] = True
    assert (nb.indices[asked] >= 0).all() and (nb.indices[~asked] == -1).all()
    assert recall_at_k(nb, exact_neighbors(x, 5, rows=rows), 5, rows) > 0.5


def test_combined_text_is_the_row_wise_join_of_the_text_columns() -> None:
    """The column-wise concatenation gives the seed's row-wise join, missing parts skipped."""
    from fashion_recs.similar.text import TEXT_COLUMNS

    frame = pd.DataFrame(
        {
            "title": ["Red  Dress", None, "Blue shirt"],
            "target_audience": ["women", "men", None],
            "color": [None, "black", "blue"],
            "department": ["dresses", None, "tops"],
            "original_description": ["A dress ", "", None],
        }
    )
    parts = frame[TEXT_COLUMNS].astype("string").fillna("")
    expected = parts.agg(" ".join, axis=1).str.replace(r"\s+", " ", regex=True).str.strip()
    assert combined_text(frame).tolist() == expected.astype(str).tolist()
