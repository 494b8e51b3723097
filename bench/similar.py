"""Similar products for every product: Annoy (the seed's settings) vs exact blocked search vs
faiss IVF (our choice for dense vectors), at 100,000 products.

1. Dense: 100,000 x 256 normalised vectors in 2,000 clusters (a catalogue's embeddings are
   clustered by kind and colour). Exact blocked top-10 is the ground truth.
2. The TF-IDF pipeline: 100,000 generated product texts and attributes -> TF-IDF
   (max_features 5000) + one-hot -> top-10 by exact sparse search (what the stage serves for
   text vectors). Annoy on the dense ~5,000-dimensional vectors, as in the seed, needs 2 GB
   and about 8 s per 1,000 products to build on this machine, so it runs on the first
   10,000 products only, beside exact search on the same 10,000.
3. Encoders: images/s of each encoder's tiny config and of MobileNetV2's full config (random
   init: no weights can be downloaded here) on CPU; and the embedding cache: a first run over
   a 500-image catalogue against a rerun after 1% of the images changed.
4. List quality: a planted catalogue of 20,000 products whose departments are coarse (4
   departments, 40 product types named by the title's last word, 20 colours, colour
   variants sharing a design); precision@10 of the product type and of the colour for every
   10th product, with the project's default text model beside the seed's recipe (no type
   token), and the block weights the stage learns from planted similar-item clicks (70% to
   a product of the same type and colour, the rest within the department) with and without
   the variant groups.
Each retrieval figure is seconds for the whole job (index build + every product's
neighbours) and recall@10 against exact search. One run; writes bench/results/similar.json.

    python bench/similar.py            # everything (about 15 minutes on 2 cores)
    python bench/similar.py --quick    # list quality only; other figures kept from the last
                                       # full run
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np
import pandas as pd

from machine import machine, now, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "similar.json"
K = 10


def clustered(n: int, d: int, clusters: int, seed: int = 42) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def catalogue(n: int, seed: int = 42) -> pd.DataFrame:
    """Product texts: Zipf words from a 30k vocabulary, plus colour/audience/department."""
    rng = np.random.default_rng(seed)
    vocab = np.asarray([f"w{i}" for i in range(30_000)])
    p = 1.0 / np.arange(1, 30_001) ** 1.05
    p /= p.sum()
    lengths = rng.integers(8, 30, n)
    words = vocab[rng.choice(30_000, int(lengths.sum()), p=p)]
    cuts = np.cumsum(lengths)[:-1]
    texts = [" ".join(chunk) for chunk in np.split(words, cuts)]
    return pd.DataFrame(
        {
            "product_id": [f"{i:024x}" for i in range(n)],
            "title": texts,
            "target_audience": rng.choice(["women", "men", "kids", "unisex"], n),
            "color": rng.choice([f"c{i}" for i in range(25)], n),
            "department": rng.choice([f"d{i}" for i in range(15)], n),
            "original_description": "",
        }
    )


DEPTS = {
    "tops": [
        "tee",
        "shirt",
        "blouse",
        "sweater",
        "hoodie",
        "cardigan",
        "vest",
        "top",
        "polo",
        "tunic",
    ],
    "bottoms": [
        "jeans",
        "trousers",
        "shorts",
        "skirt",
        "leggings",
        "chinos",
        "joggers",
        "culottes",
        "dungarees",
        "skort",
    ],
    "shoes": [
        "sneakers",
        "boots",
        "sandals",
        "loafers",
        "heels",
        "flats",
        "trainers",
        "slippers",
        "clogs",
        "mules",
    ],
    "accessories": [
        "belt",
        "scarf",
        "hat",
        "cap",
        "bag",
        "wallet",
        "gloves",
        "socks",
        "sunglasses",
        "tie",
    ],
}
PLANTED_COLOURS = [
    "black",
    "white",
    "navy",
    "red",
    "green",
    "beige",
    "grey",
    "pink",
    "blue",
    "brown",
    "olive",
    "khaki",
    "cream",
    "yellow",
    "purple",
    "orange",
    "burgundy",
    "teal",
    "tan",
    "silver",
]
ADJ = [
    "slim",
    "relaxed",
    "classic",
    "soft",
    "essential",
    "oversized",
    "cropped",
    "printed",
    "striped",
    "knitted",
    "lightweight",
    "premium",
    "basic",
    "vintage",
    "textured",
]
MAT = [
    "cotton",
    "linen",
    "denim",
    "wool",
    "leather",
    "jersey",
    "suede",
    "canvas",
    "satin",
    "fleece",
]


def planted_catalogue(n: int, seed: int = 42) -> pd.DataFrame:
    """Designs of one product type in 1-4 colours; 40% of titles name the colour."""
    rng = np.random.default_rng(seed)
    types = [(d, t) for d, ts in DEPTS.items() for t in ts]
    rows: list[dict] = []
    design = 0
    while len(rows) < n:
        dept, kind = types[rng.integers(len(types))]
        stem = f"brand{rng.integers(60)} {rng.choice(ADJ)} {rng.choice(MAT)}"
        for colour in rng.choice(PLANTED_COLOURS, rng.integers(1, 5), replace=False):
            title = f"{stem} {colour} {kind}" if rng.random() < 0.4 else f"{stem} {kind}"
            rows.append(
                {
                    "product_id": f"{len(rows):024x}",
                    "title": title.title(),
                    "target_audience": rng.choice(["women", "men", "kids"]),
                    "color": colour,
                    "department": dept,
                    "original_description": f"{rng.choice(ADJ)} {rng.choice(MAT)}",
                    "group_key": f"g{design}",
                    "kind": kind,
                }
            )
        design += 1
    return pd.DataFrame(rows[:n])


def planted_clicks(products: pd.DataFrame, n_clicks: int = 4000, seed: int = 7) -> np.ndarray:
    """Similar-item clicks as the synthetic retailer plants them: 70% go to a product of the
    same type and colour (a look-alike), the rest to any product of the same department."""
    rng = np.random.default_rng(seed)
    kinds, colours, depts = (products[c].to_numpy() for c in ("kind", "color", "department"))
    by_look = pd.Series(np.arange(len(products))).groupby([kinds, colours]).apply(np.asarray)
    by_dept = pd.Series(np.arange(len(products))).groupby(depts).apply(np.asarray)
    pairs = []
    for row in rng.choice(len(products), n_clicks, replace=False):
        mates = by_look[(kinds[row], colours[row])]
        pool = mates if rng.random() < 0.7 and len(mates) > 1 else by_dept[depts[row]]
        other = int(pool[rng.integers(len(pool))])
        if other != row:
            pairs.append((min(row, other), max(row, other)))
    return np.unique(np.asarray(pairs, dtype=np.int64), axis=0)


def learned_weights(products: pd.DataFrame, rows: np.ndarray) -> dict:
    """Block weights learned by the stage's search on planted similar clicks with and without
    the variant groups, scored like the recipes (type and colour precision on every 10th
    product)."""
    from fashion_recs.config import LearnWeightsConfig, TextModelConfig
    from fashion_recs.similar.text import fit_text_model
    from fashion_recs.similar.weights import TEXT_BLOCK, Blocks, learn_weights, variant_pairs

    defaults = TextModelConfig()
    model = fit_text_model(products, product_type=defaults.product_type)
    blocks = Blocks(model.text_block(products), model.attribute_codes(products))
    configured = {TEXT_BLOCK: model.text_weight, **model.column_weights}
    variants = variant_pairs(products["group_key"].to_numpy(dtype=object))
    out = {}
    for name, signals in {
        "learned_clicks_and_variants": {
            "similar_click": planted_clicks(products),
            "variant_group": variants,
        },
        "learned_clicks_only": {"similar_click": planted_clicks(products)},
    }.items():
        started = time.perf_counter()
        choice = learn_weights(blocks, configured, signals, LearnWeightsConfig(), K, 42)
        weights = choice.weights
        chosen = model.with_weights(
            weights[TEXT_BLOCK], {c: w for c, w in weights.items() if c != TEXT_BLOCK}
        )
        out[name] = {
            **type_and_colour_precision(products, chosen.transform(products), rows),
            "seconds": round(time.perf_counter() - started, 2),
            **choice.summary(),
        }
        print(f"  {name}: {out[name]}", flush=True)
    return out


def type_and_colour_precision(products, vectors, rows: np.ndarray) -> dict:
    """Share of the top 10 of each query row that shares its planted type and its colour."""
    from fashion_recs.similar.retrieval import exact_neighbors

    found = exact_neighbors(vectors, K, rows=rows).indices[rows]
    kinds, colours = products["kind"].to_numpy(), products["color"].to_numpy()
    return {
        "type_precision_at_10": round(float((kinds[found] == kinds[rows, None]).mean()), 4),
        "colour_precision_at_10": round(float((colours[found] == colours[rows, None]).mean()), 4),
    }


def list_quality(n: int = 20_000) -> dict:
    """Type and colour precision@10 of the default text model and of the seed's recipe."""
    from fashion_recs.config import TextModelConfig
    from fashion_recs.similar.text import fit_text_model

    products = planted_catalogue(n)
    rows = np.arange(0, n, 10)
    defaults = TextModelConfig()
    recipes = {
        "project_defaults": {
            "product_type": defaults.product_type,
            "attribute_weights": defaults.attribute_weights,
            "ngram_max": defaults.ngram_max,
        },
        "seed_recipe": {"product_type": "none"},
        "defaults_2_word_terms": {"product_type": defaults.product_type, "ngram_max": 2},
    }
    out = {}
    for name, options in recipes.items():
        started = time.perf_counter()
        model = fit_text_model(products, **options)
        out[name] = {
            **type_and_colour_precision(products, model.transform(products), rows),
            "seconds": round(time.perf_counter() - started, 2),
        }
        print(f"  {name}: {out[name]}", flush=True)
    out.update(learned_weights(products, rows))
    return {"n_products": n, "queries": len(rows), "recipes": out}


def synthetic_images(n: int, seed: int = 0) -> list:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = Image.new("RGB", (256, 256), tuple(int(c) for c in rng.integers(0, 255, 3)))
        pen = ImageDraw.Draw(image)
        box = sorted(rng.integers(10, 246, 2).tolist()) + sorted(rng.integers(10, 246, 2).tolist())
        pen.rectangle(
            (box[0], box[2], box[1], box[3]), fill=tuple(rng.integers(0, 255, 3).tolist())
        )
        pen.text((5, 5), str(i), fill=(0, 0, 0))
        out.append(image)
    return out


def encoder_figures(work: Path) -> dict:
    """Throughput of each encoder's tiny config and of full MobileNetV2, and the cache rerun."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from tests.similar import tiny_models
    from transformers import MobileNetV2Config, MobileNetV2ImageProcessor, MobileNetV2Model

    from fashion_recs.similar.encoders import load_encoder
    from fashion_recs.stages.embeddings import product_vectors

    torch.manual_seed(0)
    images = synthetic_images(64)
    sources = {
        "mobilenet_v2": tiny_models.save_mobilenet_v2(work / "tiny_mobilenet"),
        "clip": tiny_models.save_clip(work / "tiny_clip"),
        "align": tiny_models.save_align(work / "tiny_align"),
        "roberta_efficientnet": {
            "text": str(tiny_models.save_roberta(work / "tiny_roberta")),
            "image": str(tiny_models.save_efficientnet(work / "tiny_efficientnet")),
        },
    }
    sources["fashion_clip"] = sources["clip"]
    tiny = {}
    for name, source in sources.items():
        encoder = load_encoder(name, source, device="cpu", batch_size=32)
        encoder.embed_images(images[:4])  # warm-up
        started = time.perf_counter()
        encoder.embed_images(images)
        tiny[name] = round(len(images) / (time.perf_counter() - started), 1)
        print(f"  tiny {name}: {tiny[name]} images/s", flush=True)

    full_dir = work / "mobilenet_v2_full"
    MobileNetV2Model(MobileNetV2Config()).save_pretrained(full_dir)
    MobileNetV2ImageProcessor().save_pretrained(full_dir)
    full = load_encoder("mobilenet_v2", str(full_dir), device="cpu", batch_size=64)
    full.embed_images(images[:8])
    started = time.perf_counter()
    full.embed_images(images)
    full_rate = len(images) / (time.perf_counter() - started)
    print(f"  mobilenet_v2 full config: {full_rate:.1f} images/s", flush=True)

    # The cache: 500 products embedded once, then again after 5 images changed.
    n = 500
    photos = synthetic_images(n, seed=1)
    folder = work / "catalogue"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, photo in enumerate(photos):
        files[i] = folder / f"{i}.png"
        photo.save(files[i])
    texts = [f"product {i}" for i in range(n)]

    def stored(paths: dict[int, Path]) -> dict[int, Path]:
        from fashion_recs.similar.images import fetch_image

        return {i: fetch_image(str(p), folder, work / "image_cache").path for i, p in paths.items()}

    cache = work / "embedding_cache"
    started = time.perf_counter()
    product_vectors(full, "mobilenet_v2", texts, stored(files), cache)
    first = time.perf_counter() - started
    for i in range(0, n, 100):  # 1% of the photos change
        synthetic_images(1, seed=10_000 + i)[0].save(files[i])
    started = time.perf_counter()
    _, _, stats = product_vectors(full, "mobilenet_v2", texts, stored(files), cache)
    rerun = time.perf_counter() - started
    print(f"  cache: first {first:.1f} s, rerun {rerun:.2f} s ({stats})", flush=True)
    return {
        "tiny_images_per_s": tiny,
        "mobilenet_v2_full_images_per_s": round(full_rate, 1),
        "cache": {
            "products": n,
            "changed": n // 100,
            "first_seconds": first,
            "rerun_seconds": rerun,
            "rerun_stats": stats,
        },
    }


def timed(fn, *args, **kwargs):
    gc.collect()
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    from fashion_recs.similar.retrieval import (
        AnnoyParams,
        IvfParams,
        annoy_neighbors,
        exact_neighbors,
        ivf_neighbors,
        recall_at_k,
    )
    from fashion_recs.similar.text import fit_text_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--nprobe", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="list quality only")
    args = parser.parse_args()
    n = args.n
    print("list quality: planted catalogue with coarse departments", flush=True)
    quality = list_quality()
    chosen = quality["recipes"]["project_defaults"]
    learned = quality["recipes"]["learned_clicks_and_variants"]
    quality_summary = {
        "type_precision_at_10": chosen["type_precision_at_10"],
        "colour_precision_at_10": chosen["colour_precision_at_10"],
        "learned_type_precision_at_10": learned["type_precision_at_10"],
        "learned_colour_precision_at_10": learned["colour_precision_at_10"],
    }
    if args.quick:
        import json

        report = json.loads(RESULTS.read_text())
        report["summary"].update(quality_summary)
        report["list_quality"] = quality
        report["list_quality_measured_at"] = now()
        write_report(RESULTS, report)
        return

    print(f"dense: {n:,} x 256", flush=True)
    x = clustered(n, 256, 2000)
    exact, t_exact = timed(exact_neighbors, x, K)
    print(f"  exact {t_exact:.1f} s", flush=True)
    annoy, t_annoy = timed(annoy_neighbors, x, K, AnnoyParams(n_trees=20))
    print(f"  annoy {t_annoy:.1f} s recall {recall_at_k(annoy, exact, K):.4f}", flush=True)
    ivf, t_ivf = timed(ivf_neighbors, x, K, IvfParams(nprobe=args.nprobe))
    print(f"  faiss_ivf {t_ivf:.1f} s recall {recall_at_k(ivf, exact, K):.4f}", flush=True)
    dense = {
        "exact": {"seconds": t_exact, "recall_at_10": 1.0},
        "annoy": {
            "seconds": t_annoy,
            "recall_at_10": recall_at_k(annoy, exact, K),
            **annoy.info,
        },
        "faiss_ivf": {"seconds": t_ivf, "recall_at_10": recall_at_k(ivf, exact, K), **ivf.info},
    }
    del x, exact, annoy, ivf

    print(f"tf-idf pipeline: {n:,} products", flush=True)
    products = catalogue(n)
    started = time.perf_counter()
    model = fit_text_model(products, max_features=5000)
    vectors = model.transform(products)
    t_features = time.perf_counter() - started
    print(f"  features {t_features:.1f} s, {vectors.shape[1]} dims", flush=True)
    _, t_text_exact = timed(exact_neighbors, vectors, K)
    print(f"  exact sparse {t_text_exact:.1f} s", flush=True)
    m = min(n, 10_000)
    part = vectors[:m]
    part_exact, t_part_exact = timed(exact_neighbors, part, K)
    started = time.perf_counter()
    text_annoy = annoy_neighbors(part.toarray(), K, AnnoyParams(n_trees=20))
    t_text_annoy = time.perf_counter() - started
    recall_text_annoy = recall_at_k(text_annoy, part_exact, K)
    print(
        f"  {m:,} products: exact {t_part_exact:.1f} s, annoy {t_text_annoy:.1f} s "
        f"recall {recall_text_annoy:.4f}",
        flush=True,
    )
    text = {
        "features_seconds": t_features,
        "dims": int(vectors.shape[1]),
        "exact_sparse_100k": {"seconds": t_text_exact, "recall_at_10": 1.0},
        f"exact_sparse_{m}": {"seconds": t_part_exact, "recall_at_10": 1.0},
        f"annoy_dense_{m}": {
            "seconds": t_text_annoy,
            "recall_at_10": recall_text_annoy,
            **text_annoy.info,
        },
    }

    print("encoders", flush=True)
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        encoders = encoder_figures(Path(work))

    import annoy
    import faiss
    import sklearn
    import torch

    report = {
        "summary": {
            "recall_at_10": round(dense["faiss_ivf"]["recall_at_10"], 4),
            "speedup_vs_annoy": round(t_annoy / t_ivf, 2),
            "annoy_recall_at_10": round(dense["annoy"]["recall_at_10"], 4),
            "tfidf_10k_speedup_vs_annoy": round(t_text_annoy / t_part_exact, 2),
            "tfidf_annoy_recall_at_10": round(recall_text_annoy, 4),
            "tfidf_100k_exact_seconds": round(t_text_exact, 1),
            "cached_rerun_speedup": round(
                encoders["cache"]["first_seconds"] / encoders["cache"]["rerun_seconds"], 1
            ),
            "mobilenet_v2_full_images_per_s": encoders["mobilenet_v2_full_images_per_s"],
            **quality_summary,
        },
        "list_quality": quality,
        "encoders": encoders,
        "dense_100k_x_256": dense,
        "tfidf_100k": text,
        "parameters": {
            "n_products": n,
            "k": K,
            "annoy": "angular, 20 trees (the seed's), default search_k",
            "faiss_ivf": f"IVF-Flat inner product, nlist 1.6*sqrt(n), nprobe {args.nprobe}, "
            "k-means on at most 64 points per cell",
            "exact": "torch matmul in 2048-row blocks + torch.topk",
            "dense_data": "2,000 Gaussian clusters, noise 0.6, L2-normalised, seed 42",
            "tfidf_annoy_products": m,
        },
        "machine": machine(),
        "versions": {
            "annoy": getattr(annoy, "__version__", "1.17.3"),
            "faiss": faiss.__version__,
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "measured_at": now(),
    }
    write_report(RESULTS, report)


if __name__ == "__main__":
    main()
