"""Shared fixtures: a real PostgreSQL server for the session, small synthetic retailers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fashion_recs.synthetic import SyntheticSpec, generate
from tests.postgres_server import PostgresServer, find_pg_bin, start_server

# A small retailer: big enough for the planted structure to show, small enough for seconds.
SMALL_SPEC = SyntheticSpec(
    n_products=300,
    n_users=600,
    n_events=40_000,
    n_answers=750,
    seed=7,
    end_date=date(2026, 11, 1),
    days=30,
    images=False,
    # Weak taste, no personal favourites: in 300 products a stronger taste signal makes the
    # segments' favourites co-occur in sessions as often as the planted bundles, which these
    # end-to-end checks of bundle and popularity recovery are not about. Taste recovery is
    # tested on its own retailer in tests/personal.
    taste_share=0.3,
    personal_share=0.0,
)


@pytest.fixture(scope="session")
def retailer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic retailer's raw exports and truth, generated once per session."""
    out = tmp_path_factory.mktemp("retailer")
    generate(SMALL_SPEC, out)
    return out


def retailer_overrides(retailer: Path, data_root: Path, **extra: Any) -> dict[str, Any]:
    """Config overrides that point a run at `retailer`'s files and a private data root."""
    return {
        "data_root": str(data_root),
        "sources": {
            "product_data": {"uri": str(retailer / "product_data.csv")},
            "events": [{"uri": str(p)} for p in sorted(retailer.glob("events_*.csv"))],
            "user_answers": {"uri": str(retailer / "user_answers.csv")},
        },
        "popularity": {"min_segment_users": 5},
        "evaluation": {"truth_dir": str(retailer / "truth")},
        # 6k baskets over 300 products: the demo's support (tuned for 300k baskets) would
        # keep chance pairs of five baskets; this keeps what is at least 18 baskets strong.
        "fbt": {"mining": {"min_support": 0.003, "min_lift": 3.0}},
        **extra,
    }


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Started once per session; CI (FASHION_RECS_REQUIRE_POSTGRES=1) fails instead of skipping."""
    if find_pg_bin() is None:
        if os.environ.get("FASHION_RECS_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are required but not installed")
        pytest.skip("PostgreSQL binaries not installed")
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for one test."""
    name = "t_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:50]
    return postgres_server.create_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty results database, once on SQLite and once on the real PostgreSQL."""
    from fashion_recs.publish import make_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _airflow_env() -> None:
    """Point Airflow at a private home before anything imports it."""
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    home = Path(tempfile.gettempdir()) / f"fashion-recs-airflow-{os.getpid()}"
    # Always a private home: never the .airflow/ that `make demo` and `make airflow` use.
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(root / "dags")
    os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(root / "plugins")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


_airflow_env()
