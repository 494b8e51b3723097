"""Embedding cache: a vector is computed once per (content, model, revision, modality).

Embedding a catalogue's images on CPU takes hours (MobileNetV2: ~10-30 images/s on two
cores), while a day changes a few percent of it. Vectors are stored by the SHA-256 of what
was embedded (image bytes or text), so a product whose image or text did not change is never
embedded again, a changed one is, and a model upgrade (new revision) starts a new file
instead of mixing spaces. One Parquet file per (model, revision, modality), rewritten
atomically and sorted by hash, so the same content gives the same bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_recs.artifacts import write_table

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    computed: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class EmbeddingCache:
    """Vectors of one (model, revision, modality) under `root`, loaded lazily."""

    def __init__(self, root: Path, model: str, revision: str, modality: str) -> None:
        name = "__".join(_SAFE.sub("_", part) for part in (model, revision, modality))
        self.path = root / f"{name}.parquet"
        self.model, self.revision, self.modality = model, revision, modality
        self._vectors: dict[str, np.ndarray] | None = None
        self.stats = CacheStats()

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            if self.path.exists():
                table = pq.read_table(self.path, columns=["content_hash", "vector"])
                hashes = table.column("content_hash").to_pylist()
                vectors = table.column("vector").combine_chunks()
                flat = np.asarray(vectors.values.to_numpy(zero_copy_only=False), np.float32)
                dim = len(flat) // max(len(hashes), 1)
                for h, row in zip(hashes, flat.reshape(len(hashes), dim), strict=True):
                    self._vectors[h] = row
        return self._vectors

    def __len__(self) -> int:
        return len(self._load())

    def get_or_compute(
        self,
        hashes: Sequence[str],
        compute: Callable[[list[int]], np.ndarray],
    ) -> np.ndarray:
        """Vectors for `hashes`; `compute(positions)` embeds the missing ones (in order)."""
        cached = self._load()
        missing = [i for i, h in enumerate(hashes) if h not in cached]
        unique_missing: dict[str, int] = {}
        for i in missing:
            unique_missing.setdefault(hashes[i], i)
        if unique_missing:
            fresh = compute(list(unique_missing.values()))
            for h, row in zip(unique_missing, fresh, strict=True):
                cached[h] = np.asarray(row, dtype=np.float32)
        self.stats.computed += len(unique_missing)
        self.stats.hits += len(hashes) - len(missing)
        if not hashes:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cached[h] for h in hashes])

    def save(self) -> Path | None:
        cached = self._load()
        if not cached:
            return None
        hashes = sorted(cached)
        matrix = np.stack([cached[h] for h in hashes]).astype(np.float32)
        dim = matrix.shape[1]
        table = pa.table(
            {
                "content_hash": pa.array(hashes, pa.string()),
                "model": pa.array([self.model] * len(hashes), pa.string()),
                "revision": pa.array([self.revision] * len(hashes), pa.string()),
                "modality": pa.array([self.modality] * len(hashes), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim),
            }
        )
        return write_table(table, self.path)
