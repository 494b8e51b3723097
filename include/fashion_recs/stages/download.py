"""Stage 1, `download`: bring each raw export to local disk and fingerprint it.

The seed fetched its exports from Google Drive with gdown; retailers also hand over local files
or http(s) URLs. Local files are read where they are (copying gigabytes of events is waste);
remote ones land in a shared `<data_root>/raw/<retailer>/` cache. Each source's size and SHA-256
are recorded so a run says exactly which bytes it used, and an unchanged file is neither fetched
again nor re-hashed (the fingerprint cache is keyed by path, size and modification time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from fashion_recs.artifacts import atomic_path, write_json
from fashion_recs.config import RetailerConfig, SourceConfig
from fashion_recs.errors import SourceError

log = logging.getLogger(__name__)

GDRIVE_SCHEME = "gdrive://"
HTTP_TIMEOUT_S = 60
FINGERPRINT_CACHE = ".fingerprints.json"


@dataclass(frozen=True)
class LocalSource:
    """One raw export on local disk, with its fingerprint."""

    source: str
    uri: str
    local_path: Path
    size_bytes: int
    sha256: str
    fetched: bool


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class FingerprintCache:
    """Remembers SHA-256 digests by (path, size, mtime) so unchanged files are not re-hashed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, object]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    def digest(self, file: Path) -> tuple[str, bool]:
        """Return (sha256, reused) for `file`."""
        stat = file.stat()
        key = str(file.resolve())
        entry = self.entries.get(key)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return str(entry["sha256"]), True
        digest = sha256_of(file)
        self.entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        return digest, False

    def save(self) -> None:
        write_json(self.entries, self.path)


def _fetch_http(url: str, target: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "fashion-recs"})
    with (
        urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response,
        atomic_path(target) as tmp,
        open(tmp, "wb") as out,
    ):
        shutil.copyfileobj(response, out, 1 << 20)


def _fetch_gdrive(file_id: str, target: Path) -> None:
    import gdown  # imported lazily: only Google Drive sources need it

    with atomic_path(target) as tmp:
        result = gdown.download(id=file_id, output=str(tmp), quiet=True)
        if result is None:
            raise SourceError(f"gdown could not download Google Drive file id {file_id!r}")


def _remote_name(source: SourceConfig, name: str) -> str:
    if source.filename:
        return source.filename
    if source.uri.startswith(GDRIVE_SCHEME):
        return f"{name}.csv"
    return Path(urlparse(source.uri).path).name or f"{name}.csv"


def fetch_source(
    name: str, source: SourceConfig, config: RetailerConfig, cache: FingerprintCache
) -> LocalSource:
    """Make one source available locally and fingerprint it.

    Remote files are fetched to a temporary name and only replace the cached copy if their
    bytes differ, so an unchanged remote export leaves the cache (and its mtime) untouched.
    """
    uri = source.uri
    scheme = urlparse(uri).scheme
    try:
        if uri.startswith(GDRIVE_SCHEME) or scheme in ("http", "https"):
            raw_dir = config.data_root_path / "raw" / config.retailer
            target = raw_dir / _remote_name(source, name)
            staging = raw_dir / f".{target.name}.incoming"
            staging.parent.mkdir(parents=True, exist_ok=True)
            if uri.startswith(GDRIVE_SCHEME):
                _fetch_gdrive(uri.removeprefix(GDRIVE_SCHEME), staging)
            else:
                _fetch_http(uri, staging)
            new_digest = sha256_of(staging)
            changed = not target.exists() or cache.digest(target)[0] != new_digest
            if changed:
                staging.replace(target)
            else:
                staging.unlink()
            digest, _ = cache.digest(target)
            return LocalSource(name, uri, target, target.stat().st_size, digest, changed)
        path = config.resolve(uri.removeprefix("file://"))
        if not path.is_file():
            raise SourceError(
                f"source {name!r}: file {path} does not exist (configured uri {uri!r}); "
                "generate the demo data with `make data` or fix sources in the config"
            )
        digest, _ = cache.digest(path)
        return LocalSource(name, uri, path, path.stat().st_size, digest, False)
    except SourceError:
        raise
    except OSError as exc:  # network and filesystem errors alike
        raise SourceError(f"source {name!r}: could not fetch {uri!r}: {exc}") from exc


def download_sources(config: RetailerConfig) -> pd.DataFrame:
    """Stage entry point: every configured export, local and fingerprinted, as a manifest frame."""
    cache = FingerprintCache(config.data_root_path / "raw" / FINGERPRINT_CACHE)
    named = config.sources.named()
    rows = []
    for name, source in named:
        local = fetch_source(name, source, config, cache)
        log.info(
            "source %s: %s (%.1f MiB, sha256 %s, %s)",
            name,
            local.local_path,
            local.size_bytes / 2**20,
            local.sha256[:12],
            "fetched" if local.fetched else "unchanged",
        )
        rows.append({**local.__dict__, "local_path": str(local.local_path)})
    cache.save()
    return pd.DataFrame(rows)
