"""Product images: fetched once, kept by content hash, decoded or quarantined with a reason.

`other_attributes.images` holds paths relative to the product export, `file://` URIs or
http(s) URLs. Each is fetched with a timeout, retries with back-off and a size cap, and
stored under `<cache>/<sha256[:2]>/<sha256>`; a URL already fetched is remembered by a small
pointer file keyed by the URL's hash, so daily runs do not fetch it again. An image that
cannot be fetched or decoded is reported with a reason (the product then falls back to
text-only embeddings); the caller quarantines it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from fashion_recs.artifacts import atomic_path

log = logging.getLogger(__name__)

# Reasons an image is unusable; the quarantine's `reason` column.
MISSING = "missing_image_file"
FETCH_FAILED = "image_fetch_failed"
TOO_LARGE = "image_too_large"
UNREADABLE = "unreadable_image"


@dataclass(frozen=True)
class FetchedImage:
    """Where an image's bytes are cached and their hash, or why there are none."""

    uri: str
    path: Path | None
    sha256: str | None
    reason: str | None = None
    detail: str = ""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(cache: Path, data: bytes) -> tuple[Path, str]:
    digest = _digest(data)
    target = cache / digest[:2] / digest
    if not target.exists():
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return target, digest


def _read_http(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "fashion-recs"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read(max_bytes + 1)
    return data


def fetch_image(
    uri: str,
    base_dir: Path,
    cache: Path,
    *,
    timeout: float = 10.0,
    retries: int = 2,
    max_bytes: int = 10 << 20,
) -> FetchedImage:
    """Fetch one image into the content-addressed cache (see module docstring)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        pointer = cache / "urls" / _digest(uri.encode())
        if pointer.exists():
            digest = pointer.read_text().strip()
            path = cache / digest[:2] / digest
            if path.exists():
                return FetchedImage(uri, path, digest)
        error = ""
        for attempt in range(retries + 1):
            try:
                data = _read_http(uri, timeout, max_bytes)
                break
            except OSError as exc:  # URLError, timeouts, connection resets
                error = str(exc)
                if attempt < retries:
                    time.sleep(0.5 * 2**attempt)
        else:
            return FetchedImage(uri, None, None, FETCH_FAILED, error[:200])
        if len(data) > max_bytes:
            return FetchedImage(uri, None, None, TOO_LARGE, f"over {max_bytes} bytes")
        path, digest = _store(cache, data)
        with atomic_path(pointer) as tmp:
            tmp.write_text(digest + "\n")
        return FetchedImage(uri, path, digest)
    local = Path(parsed.path) if parsed.scheme == "file" else Path(uri)
    local = local if local.is_absolute() else base_dir / local
    if not local.is_file():
        return FetchedImage(uri, None, None, MISSING, str(local))
    if local.stat().st_size > max_bytes:
        return FetchedImage(uri, None, None, TOO_LARGE, f"over {max_bytes} bytes")
    path, digest = _store(cache, local.read_bytes())
    return FetchedImage(uri, path, digest)


def decode_image(path: Path, max_pixels: int = 40_000_000) -> Image.Image:
    """The image as RGB; raises ValueError (with the reason) when it cannot be used."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            if image.width * image.height > max_pixels:
                raise ValueError(f"{TOO_LARGE}: {image.width}x{image.height} pixels")
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{UNREADABLE}: {exc}") from None
