"""The download stage: local files fingerprinted in place, http sources cached and skipped."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial

import pytest

from fashion_recs.config import SourceConfig
from fashion_recs.errors import SourceError
from fashion_recs.stages.download import FingerprintCache, download_sources, fetch_source
from tests.helpers import make_config, write_csv


@pytest.fixture
def http_root(tmp_path):
    """A static file server on 127.0.0.1 serving `tmp_path/www`."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_local_sources_are_fingerprinted_in_place(tmp_path) -> None:
    raw = tmp_path / "raw"
    product = write_csv(raw / "product_data.csv", ["id"], [["x"]])
    events = write_csv(raw / "events_1.csv", ["user_id"], [["U1"]])
    answers = write_csv(raw / "user_answers.csv", ["User_ID"], [["U1"]])
    config = make_config(
        tmp_path,
        sources={
            "product_data": {"uri": str(product)},
            "events": [{"uri": str(events)}],
            "user_answers": {"uri": str(answers)},
        },
    )
    manifest = download_sources(config).set_index("source")
    assert list(manifest.index) == ["product_data", "events_1", "user_answers"]
    assert manifest.loc["product_data", "local_path"] == str(product)
    assert (
        manifest.loc["product_data", "sha256"] == hashlib.sha256(product.read_bytes()).hexdigest()
    )
    assert not manifest["fetched"].any()


def test_fingerprint_cache_reuses_digest_until_the_file_changes(tmp_path) -> None:
    file = tmp_path / "f.csv"
    file.write_text("a\n")
    cache = FingerprintCache(tmp_path / "cache.json")
    first, reused = cache.digest(file)
    assert not reused
    assert cache.digest(file) == (first, True)
    file.write_text("a changed file\n")
    second, reused = cache.digest(file)
    assert not reused and second != first


def test_http_source_is_fetched_once_and_skipped_when_unchanged(tmp_path, http_root) -> None:
    root, base = http_root
    (root / "product_data.csv").write_text("id\nx\n")
    config = make_config(tmp_path)
    cache = FingerprintCache(tmp_path / "cache.json")
    source = SourceConfig(uri=f"{base}/product_data.csv")
    first = fetch_source("product_data", source, config, cache)
    assert first.fetched and first.local_path.read_text() == "id\nx\n"
    again = fetch_source("product_data", source, config, cache)
    assert not again.fetched and again.sha256 == first.sha256
    (root / "product_data.csv").write_text("id\ny\n")
    changed = fetch_source("product_data", source, config, cache)
    assert changed.fetched and changed.sha256 != first.sha256


def test_missing_sources_fail_with_a_clear_message(tmp_path, http_root) -> None:
    _, base = http_root
    config = make_config(tmp_path)
    cache = FingerprintCache(tmp_path / "cache.json")
    with pytest.raises(SourceError, match="does not exist"):
        fetch_source("product_data", SourceConfig(uri="nowhere.csv"), config, cache)
    with pytest.raises(SourceError, match="could not fetch"):
        fetch_source("product_data", SourceConfig(uri=f"{base}/missing.csv"), config, cache)


def test_gdrive_uri_names_the_cached_file() -> None:
    from fashion_recs.stages.download import _remote_name

    assert _remote_name(SourceConfig(uri="gdrive://1AbC"), "events_1") == "events_1.csv"
    assert _remote_name(SourceConfig(uri="gdrive://1AbC", filename="ev.csv"), "x") == "ev.csv"
