"""The retailer config: validation catches mistakes, overrides merge, paths resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fashion_recs.config import DEFAULT_CONFIG_PATH, deep_merge, load_config


def test_project_config_loads_with_paths_relative_to_the_project() -> None:
    config = load_config()
    root = DEFAULT_CONFIG_PATH.parents[1]
    assert config.data_root_path == root / "data"
    assert (
        config.resolve(config.sources.product_data.uri) == root / "data/raw/demo/product_data.csv"
    )
    assert config.events.chunk_size == 100_000 and config.events.id_pattern == "[a-zA-Z0-9]{3,}"


def test_overrides_merge_nested_keys_without_dropping_siblings() -> None:
    config = load_config(None, {"events": {"chunk_size": 5000}, "popularity": {"top_k": 7}})
    assert config.events.chunk_size == 5000
    assert config.events.events_of_interest[0] == "product_details_page_view"
    assert config.popularity.top_k == 7 and config.popularity.half_life_days == 14
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"events": {"chunk_sise": 10}}, "chunk_sise"),
        ({"quality": {"max_reject_rate": {"events": 1.5}}}, r"within \[0, 1\]"),
        ({"demographics": {"age_bins": [0, 18]}}, "one more edge"),
        ({"retailer": "Bad Name"}, "retailer"),
        (
            {
                "interactions": {
                    "rules": [
                        {"event_name": "v", "category": "a", "weight": 1},
                        {"event_name": "v", "category": "b", "weight": 2},
                    ]
                }
            },
            "repeat",
        ),
    ],
)
def test_invalid_configs_are_rejected_with_the_offending_key(overrides, message) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(None, overrides)


def test_config_in_its_own_directory_resolves_against_that_directory(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG_PATH.read_text()
    (tmp_path / "shop.yaml").write_text(text)
    config = load_config(tmp_path / "shop.yaml")
    assert config.data_root_path == tmp_path / "data"


def test_basket_categories_must_be_interaction_categories(tmp_path) -> None:
    from pydantic import ValidationError

    from tests.helpers import make_config

    with pytest.raises(ValidationError, match=r"fbt\.baskets\.categories \['clicks'\]"):
        make_config(tmp_path, fbt={"baskets": {"categories": ["view", "clicks"]}})
