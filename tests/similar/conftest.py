"""Fixtures of the similar-products tests: tiny encoder models, and no real hub cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.similar import tiny_models


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | dict[str, str]]:
    """Each encoder's source: tiny models saved once per session in the hub's file layout."""
    root = tmp_path_factory.mktemp("tiny_encoders")
    clip = str(tiny_models.save_clip(root / "clip"))
    return {
        "mobilenet_v2": str(tiny_models.save_mobilenet_v2(root / "mobilenet_v2")),
        "clip": clip,
        "fashion_clip": clip,
        "align": str(tiny_models.save_align(root / "align")),
        "roberta_efficientnet": {
            "text": str(tiny_models.save_roberta(root / "roberta")),
            "image": str(tiny_models.save_efficientnet(root / "efficientnet")),
        },
    }


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test may find (or fetch) a real checkpoint: the hub cache is an empty folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
