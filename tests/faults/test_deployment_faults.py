"""The Docker deployment is closed by default: no default secrets or passwords outside the
explicit demo env file, ports on 127.0.0.1, and the service's write endpoint behind a key."""

from __future__ import annotations

import re

import pytest

from tests.test_docker_compose import (
    COMPOSE_FILE,
    DEMO_ENV,
    DEMO_ENV_FILE,
    env_of,
    load_compose,
)

REQUIRED = [
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_DB_PASSWORD",
    "RESULTS_DB_PASSWORD",
]
REAL = {name: f"real-{name.lower()}-0123456789abcdef" for name in REQUIRED}


def test_without_an_env_file_compose_refuses_to_start() -> None:
    with pytest.raises(ValueError, match=r"set \w+ in \.env"):
        load_compose(demo=False)


@pytest.mark.parametrize("missing", REQUIRED)
def test_every_secret_is_required(missing: str) -> None:
    env = {k: v for k, v in REAL.items() if k != missing}
    with pytest.raises(ValueError, match=rf"required variable {missing} is missing"):
        load_compose(env, demo=False)


def test_given_secrets_are_used_and_no_default_password_is_left() -> None:
    compose = load_compose(REAL, demo=False)
    text = repr(compose)
    for weak in ("airflow:airflow@", "change-me", ":recs@", "not-secret", "-demo"):
        assert weak not in text, weak
    common = env_of(compose["x-airflow-common"])
    assert common["AIRFLOW__CORE__FERNET_KEY"] == REAL["AIRFLOW_FERNET_KEY"]
    assert REAL["AIRFLOW_DB_PASSWORD"] in common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    metadata = env_of(compose["services"]["postgres"])
    assert metadata["POSTGRES_PASSWORD"] == REAL["AIRFLOW_DB_PASSWORD"]
    results = env_of(compose["services"]["results-db"])
    assert results["POSTGRES_PASSWORD"] == REAL["RESULTS_DB_PASSWORD"]


def test_the_demo_values_are_an_explicit_opt_in() -> None:
    assert set(REQUIRED) <= DEMO_ENV.keys()
    assert "never use them for anything shared" in DEMO_ENV_FILE.read_text()
    assert "--env-file docker/demo.env" in COMPOSE_FILE.read_text()
    # The raw file carries no default for any secret.
    raw = COMPOSE_FILE.read_text()
    for name in REQUIRED:
        assert re.findall(rf"\$\{{{name}(:?[-+])", raw) == [], name


def test_every_published_port_listens_on_localhost_by_default() -> None:
    for env, address in (({}, "127.0.0.1"), ({"BIND_ADDRESS": "0.0.0.0"}, "0.0.0.0")):
        services = load_compose(env, demo=True)["services"]
        published = [
            (name, str(port))
            for name, service in services.items()
            for port in service.get("ports", [])
        ]
        assert len(published) >= 4
        for name, port in published:
            assert port.startswith(f"{address}:") and port.count(":") == 2, (name, port)


def test_the_service_write_key_is_passed_through() -> None:
    service = load_compose({"RECS_SERVICE_API_KEY": "k3y"})["services"]["recs-service"]
    assert env_of(service)["FASHION_RECS_API_KEY"] == "k3y"
    open_service = load_compose()["services"]["recs-service"]
    assert env_of(open_service)["FASHION_RECS_API_KEY"] == ""
