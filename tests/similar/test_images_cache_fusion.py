"""Image fetching and its cache, the embedding cache, perturbations and fusion."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from fashion_recs.similar.cache import EmbeddingCache, text_hash
from fashion_recs.similar.fusion import fuse
from fashion_recs.similar.images import (
    FETCH_FAILED,
    MISSING,
    TOO_LARGE,
    UNREADABLE,
    decode_image,
    fetch_image,
)
from fashion_recs.similar.perturb import PERTURBATIONS, perturb


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_local_images_are_stored_by_content_hash(tmp_path) -> None:
    png(tmp_path / "export" / "images" / "a.png")
    png(tmp_path / "export" / "images" / "b.png")  # same bytes, another name
    cache = tmp_path / "cache"
    a = fetch_image("images/a.png", tmp_path / "export", cache)
    b = fetch_image(f"file://{tmp_path / 'export' / 'images' / 'b.png'}", tmp_path, cache)
    assert a.reason is None and a.sha256 == b.sha256 and a.path == b.path
    assert a.path.parent.name == a.sha256[:2]
    assert decode_image(a.path).size == (32, 32)


def test_bad_images_come_back_with_a_reason(tmp_path) -> None:
    cache = tmp_path / "cache"
    assert fetch_image("nope.png", tmp_path, cache).reason == MISSING
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    got = fetch_image("broken.png", tmp_path, cache)
    with pytest.raises(ValueError, match=UNREADABLE):
        decode_image(got.path)
    png(tmp_path / "big.png", size=200)
    assert fetch_image("big.png", tmp_path, cache, max_bytes=100).reason == TOO_LARGE


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def test_http_images_are_fetched_once_and_failures_retried(tmp_path) -> None:
    png(tmp_path / "site" / "p.png")
    handler = lambda *a, **kw: _Handler(*a, directory=str(tmp_path / "site"), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cache = tmp_path / "cache"
        first = fetch_image(f"{url}/p.png", tmp_path, cache)
        again = fetch_image(f"{url}/p.png", tmp_path, cache)
        assert first.reason is None and again.path == first.path
        assert _Handler.hits == 1  # the second call used the cache
        missing = fetch_image(f"{url}/missing.png", tmp_path, cache, retries=1, timeout=2)
        assert missing.reason == FETCH_FAILED and "404" in missing.detail
        assert _Handler.hits == 3  # one try and one retry
    finally:
        server.shutdown()


def test_embedding_cache_computes_only_what_it_has_not_seen(tmp_path) -> None:
    calls: list[list[int]] = []

    def compute(positions: list[int]) -> np.ndarray:
        calls.append(positions)
        return np.asarray([[float(p), 1.0] for p in positions], dtype=np.float32)

    hashes = [text_hash(t) for t in ["a", "b", "a", "c"]]
    cache = EmbeddingCache(tmp_path, "clip", "rev1", "text")
    first = cache.get_or_compute(hashes, compute)
    assert calls == [[0, 1, 3]] and (first[0] == first[2]).all()
    cache.save()
    reopened = EmbeddingCache(tmp_path, "clip", "rev1", "text")
    again = reopened.get_or_compute([*hashes, text_hash("d")], compute)
    assert calls[-1] == [4] and np.array_equal(again[:4], first)
    assert reopened.stats.hits == 4 and reopened.stats.computed == 1
    # A new revision is a new space: nothing is reused.
    assert len(EmbeddingCache(tmp_path, "clip", "rev2", "text")) == 0
    reopened.save()
    bytes_once = reopened.path.read_bytes()
    reopened.save()
    assert reopened.path.read_bytes() == bytes_once


def test_perturbations_change_the_image_deterministically(tmp_path) -> None:
    image = Image.new("RGB", (40, 40), (10, 120, 200))
    image.paste((250, 250, 0), (0, 0, 10, 40))
    for kind in PERTURBATIONS:
        a, b = perturb(image, kind, seed=3), perturb(image, kind, seed=3)
        assert a.size == image.size and a.tobytes() == b.tobytes()
        assert a.tobytes() != image.tobytes()
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(image, "rotate", 0)


def test_fusion_weights_blocks_and_falls_back_to_the_text_block() -> None:
    text = sp.csr_matrix(np.asarray([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    image = np.asarray([[0.0, 3.0, 4.0], [0.0, 4.0, 3.0], [0.0, 0.0, 0.0]])  # row 2: no image
    fused = fuse([(text, 1.0), (image, 2.0)])
    assert np.allclose(np.linalg.norm(fused, axis=1), 1.0)
    # cos = (1 * cos_text + 4 * cos_image) / 5 for two products with both blocks.
    cos_text, cos_image = 1 / np.sqrt(2), 24 / 25
    assert fused[0] @ fused[1] == pytest.approx((cos_text + 4 * cos_image) / 5, rel=1e-6)
    assert np.allclose(fused[2, 2:], 0.0) and fused[2, :2] @ fused[2, :2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one row per product"):
        fuse([(text, 1.0), (image[:2], 1.0)])
