"""Static checks of the Docker deployment: docker-compose.yaml, docker/Dockerfile, .dockerignore.

No Docker engine is needed. The compose file is parsed with PyYAML (anchors and `<<` merge keys
resolve at load time) and then interpolated the way `docker compose` does it, by default with
the demo values of `docker/demo.env` (a checkout without an .env file has no secrets and must
not start: tests/faults/test_deployment_faults.py).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from fashion_recs.config import PublishConfig

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SPARK_DOCKERFILE = ROOT / "docker" / "spark.Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REQUIREMENTS = ROOT / "requirements.txt"

AIRFLOW_HOME = "/opt/airflow"
RESULTS_DB = "results-db"
METADATA_DB = "postgres"
API_SERVER = "airflow-apiserver"
INIT = "airflow-init"
WORKER = "airflow-worker"
SPARK_MASTER = "spark-master"
SPARK_WORKER = "spark-worker"
SPARK_SERVICES = (SPARK_MASTER, SPARK_WORKER)

# Every Airflow component of a CeleryExecutor deployment, plus the databases and the broker.
AIRFLOW_SERVICES = {
    API_SERVER,
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    WORKER,
    INIT,
    "flower",
}
REQUIRED_SERVICES = sorted(
    AIRFLOW_SERVICES | {METADATA_DB, RESULTS_DB, "redis", SPARK_MASTER, SPARK_WORKER}
)
# Long-running Airflow components and the CLI command each one must run.
COMPONENT_COMMANDS = {
    API_SERVER: "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    WORKER: "celery worker",
    "flower": "celery flower",
}
# Settings every Airflow container must agree on, or components cannot talk to each other.
SHARED_SECRETS = {
    # Signs the tokens task runs use against the Execution API (apache/airflow#49646).
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    # Signs the API server's requests for task logs served by the workers.
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
}
# Project directories each Airflow container sees at /opt/airflow/<name>.
PROJECT_MOUNTS = ["dags", "include", "plugins", "config", "data", "logs"]
SOURCE_DIRS = ["dags", "include", "plugins", "config"]

# --------------------------------------------------------------------------------------------
# Compose-style variable interpolation
# --------------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Substitute `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:?err}`, `$$`, ... like compose."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        current = env.get(name)
        op, arg = match["op"], match["arg"]
        present = current is not None if op in {"-", "?", "+"} else bool(current)
        if op in {"-", ":-"}:
            return current if present else arg
        if op in {"?", ":?"}:
            if not present:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return current
        if op in {"+", ":+"}:
            return arg if present else ""
        return current or ""

    return _VARIABLE.sub(substitute, value)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as `docker compose --env-file` reads them (no quoting used here)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2) if k[:1] != "#"}


DEMO_ENV_FILE = ROOT / "docker" / "demo.env"
DEMO_ENV = read_env_file(DEMO_ENV_FILE)


def load_compose(env: dict[str, str] | None = None, *, demo: bool = True) -> dict[str, Any]:
    """The compose file as `docker compose` reads it: by default with the explicit demo values
    (`--env-file docker/demo.env`) under `env`; `demo=False` is a checkout with only `env`."""
    base = DEMO_ENV if demo else {}
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), {**base, **(env or {})})


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
COMMON = COMPOSE["x-airflow-common"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def airflow_service_names(compose: dict[str, Any]) -> set[str]:
    """Services built from the project image, i.e. those that merge the x-airflow-common anchor."""
    build = compose["x-airflow-common"]["build"]
    return {name for name, svc in compose["services"].items() if svc.get("build") == build}


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{host path: container path} of the service's short-syntax bind mounts (./x:/y)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[source] = target
    return mounts


def host_ports(service: dict[str, Any]) -> list[str]:
    published = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.append(str(port["published"]))
            continue
        parts = str(port).split(":")
        if len(parts) > 1:  # "container" alone publishes a random host port
            published.append(parts[-2])
    return published


def container_paths_made_by_init() -> set[str]:
    """Directories the airflow-init script creates with mkdir (brace expansion included)."""
    script = command_text(SERVICES[INIT])
    paths: set[str] = set()
    for line in script.splitlines():
        if not re.match(r"\s*mkdir\b", line):
            continue
        for token in line.split()[1:]:
            braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", token)
            options = braces[2].split(",") if braces else [""]
            for option in options:
                path = f"{braces[1]}{option}{braces[3]}" if braces else token
                if path.startswith("/"):
                    paths.add(path.rstrip("/"))
    return paths


def gitignored_top_level() -> set[str]:
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return {line.strip().strip("/") for line in lines if line.strip() and line[0] not in "#!"}


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REQUIRED_SERVICES)
def test_required_service_exists(name: str) -> None:
    assert name in SERVICES, f"docker-compose.yaml has no `{name}` service"


def test_every_airflow_component_uses_the_common_anchor() -> None:
    assert airflow_service_names(COMPOSE) == AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES:
        service = SERVICES[name]
        assert service["image"] == COMMON["image"], name
        assert service["volumes"] == COMMON["volumes"], name
        assert env_of(COMMON).items() <= env_of(service).items(), (
            f"{name} overrides or drops part of the common Airflow environment"
        )


@pytest.mark.parametrize(("service", "command"), sorted(COMPONENT_COMMANDS.items()))
def test_component_runs_its_airflow_command(service: str, command: str) -> None:
    assert command_text(SERVICES[service]) == command


def test_airflow_containers_run_as_airflow_uid_with_group_zero() -> None:
    assert COMMON["user"] == "50000:0"
    assert load_compose({"AIRFLOW_UID": "1234"})["x-airflow-common"]["user"] == "1234:0"
    for name in AIRFLOW_SERVICES - {INIT}:
        assert SERVICES[name]["user"] == COMMON["user"], name
    # airflow-init runs as root so it can create and chown the runtime directories.
    assert SERVICES[INIT]["user"] == "0:0"


# --------------------------------------------------------------------------------------------
# Airflow 3 settings shared by every component
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "variable"), sorted(SHARED_SECRETS.items()))
def test_secret_is_shared_non_empty_and_overridable(setting: str, variable: str) -> None:
    values = {name: env_of(SERVICES[name]).get(setting) for name in sorted(AIRFLOW_SERVICES)}
    assert None not in values.values(), f"{setting} missing from: {values}"
    assert len(set(values.values())) == 1, f"{setting} differs between containers: {values}"
    assert len(next(iter(values.values()))) >= 16, f"{setting} default is empty or trivial"

    overridden = load_compose({variable: "from-dot-env"})["services"]
    assert {env_of(overridden[name])[setting] for name in AIRFLOW_SERVICES} == {"from-dot-env"}


def test_execution_api_url_points_at_the_api_server() -> None:
    urls = {
        name: env_of(SERVICES[name]).get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL")
        for name in sorted(AIRFLOW_SERVICES)
    }
    assert len(set(urls.values())) == 1, f"execution API URL differs between containers: {urls}"
    url = urlsplit(next(iter(urls.values())))
    assert url.scheme == "http"
    assert url.hostname == API_SERVER
    assert url.path == "/execution/"
    assert command_text(SERVICES[url.hostname]) == "api-server"
    # The URL uses the API server's container port (the one api-server listens on).
    container_ports = [str(port).split(":")[-1] for port in SERVICES[API_SERVER]["ports"]]
    assert str(url.port) in container_ports


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor"),
        ("AIRFLOW__CORE__LOAD_EXAMPLES", "false"),
        ("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "true"),
        ("AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "true"),
        ("AIRFLOW_UID", "50000"),
        ("FASHION_RECS_CONFIG", f"{AIRFLOW_HOME}/config/retailer.yaml"),
    ],
)
def test_common_airflow_setting(setting: str, expected: str) -> None:
    assert env_of(COMMON).get(setting) == expected


def test_auth_manager_class_exists() -> None:
    """The configured class is defined in the installed Airflow (checked without importing it)."""
    module, _, cls = env_of(COMMON)["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{top} is not installed")
    source = Path(next(iter(spec.submodule_search_locations)), *rest).with_suffix(".py")
    assert source.is_file(), f"{module} is not part of the installed {top}"
    classes = {
        node.name
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    assert cls in classes


def test_config_file_is_mounted_where_fashion_recs_config_points() -> None:
    config = Path(env_of(COMMON)["FASHION_RECS_CONFIG"])
    mounts = {target: source for source, target in bind_mounts(COMMON).items()}
    host_dir = mounts[str(config.parent)]
    assert (ROOT / host_dir / config.name).is_file()


def test_metadata_db_and_broker_urls_match_their_services() -> None:
    env = env_of(COMMON)
    db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    pg = env_of(SERVICES[METADATA_DB])
    assert db.scheme.startswith("postgresql")
    assert db.hostname == METADATA_DB
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"]).hostname == METADATA_DB
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"


@pytest.mark.parametrize(
    "env",
    [{}, {"RESULTS_DB_USER": "shop", "RESULTS_DB_PASSWORD": "s3cret", "RESULTS_DB_NAME": "prod"}],
    ids=["defaults", "overridden"],
)
def test_results_connection_points_at_results_db(env: dict[str, str]) -> None:
    compose = load_compose(env)
    variable = f"AIRFLOW_CONN_{PublishConfig().conn_id.upper()}"
    assert variable == "AIRFLOW_CONN_FASHION_RECS_RESULTS"
    url = urlsplit(env_of(compose["x-airflow-common"])[variable])
    results_db = env_of(compose["services"][RESULTS_DB])

    assert url.scheme in {"postgresql", "postgres"}
    assert url.hostname == RESULTS_DB, "results must go to the results-db service"
    assert url.port == 5432
    assert (unquote(url.username or ""), unquote(url.password or ""), url.path.lstrip("/")) == (
        results_db["POSTGRES_USER"],
        results_db["POSTGRES_PASSWORD"],
        results_db["POSTGRES_DB"],
    )
    assert url.hostname != METADATA_DB


def test_reference_service_reads_the_same_results_db_as_airflow_writes() -> None:
    """The recs-service container runs `fashion-recs serve` from the project image against
    the database the DAG publishes to, once that database is healthy."""
    compose = load_compose({"RESULTS_DB_PASSWORD": "s3cret"})
    service = compose["services"]["recs-service"]
    assert service["image"] == compose["x-airflow-common"]["image"]
    assert service["entrypoint"][:2] == ["fashion-recs", "serve"]
    db = next(a.split("=", 1)[1] for a in service["entrypoint"] if a.startswith("--db="))
    airflow = env_of(compose["x-airflow-common"])["AIRFLOW_CONN_FASHION_RECS_RESULTS"]
    assert db == airflow and "s3cret" in db
    assert service["depends_on"][RESULTS_DB]["condition"] == "service_healthy"


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROJECT_MOUNTS)
def test_project_directory_is_mounted_into_airflow_home(name: str) -> None:
    assert bind_mounts(COMMON).get(f"./{name}") == f"{AIRFLOW_HOME}/{name}"


@pytest.mark.parametrize(
    "host_path",
    sorted({path for svc in SERVICES.values() for path in bind_mounts(svc)}),
)
def test_bind_mount_source_exists_or_is_runtime_dir_created_by_init(host_path: str) -> None:
    relative = Path(host_path)
    assert not relative.is_absolute(), "bind mounts must be relative to the repository"
    if (ROOT / relative).exists():
        return
    # Only git-ignored runtime directories may be missing from a checkout, and then airflow-init
    # must create them (otherwise Docker creates them owned by root).
    name = relative.parts[0]
    assert name not in SOURCE_DIRS, f"{host_path} is source and must exist"
    assert name in gitignored_top_level(), f"{host_path} is missing and not a git-ignored dir"
    assert bind_mounts(COMMON)[host_path] in container_paths_made_by_init(), (
        f"airflow-init does not create the mount target of {host_path}"
    )


@pytest.mark.parametrize("name", SOURCE_DIRS)
def test_source_directory_exists(name: str) -> None:
    assert (ROOT / name).is_dir()


def test_named_volumes_are_declared_and_databases_do_not_share_one() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = {}
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.setdefault(source, set()).add(name)
    db_volumes = [
        {v.split(":")[0] for v in SERVICES[db]["volumes"]} for db in (METADATA_DB, RESULTS_DB)
    ]
    assert all(db_volumes)
    assert db_volumes[0].isdisjoint(db_volumes[1])


# --------------------------------------------------------------------------------------------
# Start-up order and health
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_depends_on_refers_to_defined_services_with_usable_conditions(name: str) -> None:
    depends_on = SERVICES[name].get("depends_on") or {}
    if isinstance(depends_on, list):
        depends_on = {dep: {"condition": "service_started"} for dep in depends_on}
    for dependency, spec in depends_on.items():
        assert dependency in SERVICES, f"{name} depends on undefined service {dependency}"
        assert dependency != name
        condition = spec.get("condition", "service_started")
        assert condition in {
            "service_started",
            "service_healthy",
            "service_completed_successfully",
        }
        if condition == "service_healthy":
            assert "healthcheck" in SERVICES[dependency], (
                f"{name} waits for {dependency} to be healthy but it has no healthcheck"
            )
        if condition == "service_completed_successfully":
            assert dependency == INIT


@pytest.mark.parametrize("name", sorted(AIRFLOW_SERVICES - {INIT}))
def test_component_waits_for_init_and_all_backends(name: str) -> None:
    depends_on = SERVICES[name]["depends_on"]
    assert depends_on[INIT] == {"condition": "service_completed_successfully"}
    for backend in (METADATA_DB, RESULTS_DB, "redis"):
        assert depends_on[backend] == {"condition": "service_healthy"}, (name, backend)


@pytest.mark.parametrize(
    ("name", "probe"),
    [(METADATA_DB, "pg_isready"), (RESULTS_DB, "pg_isready"), ("redis", "redis-cli")],
)
def test_backend_has_healthcheck(name: str, probe: str) -> None:
    healthcheck = SERVICES[name]["healthcheck"]
    test = healthcheck["test"]
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert probe in " ".join(test[1:])
    assert healthcheck.get("retries", 0) > 0


@pytest.mark.parametrize("name", sorted(COMPONENT_COMMANDS))
def test_long_running_component_has_healthcheck_and_restarts(name: str) -> None:
    assert SERVICES[name]["healthcheck"]["test"]
    assert SERVICES[name]["restart"] == "always"


def test_no_published_host_port_is_used_twice() -> None:
    owners: dict[str, list[str]] = {}
    for name, service in SERVICES.items():
        for port in host_ports(service):
            owners.setdefault(port, []).append(name)
    assert owners, "nothing is published to the host"
    assert {port: names for port, names in owners.items() if len(names) > 1} == {}
    assert "8080" in host_ports(SERVICES[API_SERVER])


def test_worker_can_be_scaled() -> None:
    worker = SERVICES[WORKER]
    assert "container_name" not in worker
    assert not host_ports(worker), "a published host port would clash with --scale"
    assert env_of(worker).get("DUMB_INIT_SETSID") == "0"


def test_flower_is_optional() -> None:
    assert SERVICES["flower"]["profiles"] == ["flower"]
    for name in set(SERVICES) - {"flower"}:
        assert "profiles" not in SERVICES[name], f"{name} would not start by default"


# --------------------------------------------------------------------------------------------
# airflow-init
# --------------------------------------------------------------------------------------------


def test_init_migrates_the_db_and_checks_airflow_uid() -> None:
    script = command_text(SERVICES[INIT])
    assert SERVICES[INIT]["entrypoint"] == "/bin/bash"
    assert re.search(r"airflow db migrate\b", script)
    assert "AIRFLOW_UID" in script
    assert {f"{AIRFLOW_HOME}/logs", f"{AIRFLOW_HOME}/data"} <= container_paths_made_by_init()
    assert "restart" not in SERVICES[INIT], "a one-shot job must not restart"


@pytest.mark.parametrize("airflow_uid", [None, "1000"], ids=["uid-unset", "uid-set"])
def test_init_script_is_valid_bash(airflow_uid: str | None, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not available")
    env = {"AIRFLOW_UID": airflow_uid} if airflow_uid else {}
    command = load_compose(env)["services"][INIT]["command"]
    assert command[0] == "-c"
    script = tmp_path / "init.sh"
    script.write_text(command[1])
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Image: docker/Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def base_image() -> str:
    (image,) = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    return image


def requirements_airflow_pin() -> str:
    pins = re.findall(r"(?im)^apache[-_.]airflow\s*==\s*([\w.]+)\s*$", REQUIREMENTS.read_text())
    assert len(pins) == 1, "requirements.txt must pin apache-airflow exactly once"
    return pins[0]


def test_build_context_and_dockerfile_exist() -> None:
    build = COMMON["build"]
    context = ROOT / build["context"]
    assert context.resolve() == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


def test_dockerfile_uses_the_airflow_version_pinned_in_requirements() -> None:
    match = re.fullmatch(
        r"apache/airflow:(?P<airflow>\d+\.\d+\.\d+)-python(?P<py>\d+\.\d+)", base_image()
    )
    assert match, f"unexpected base image {base_image()!r}"
    assert match["airflow"] == requirements_airflow_pin()


def test_dockerfile_python_satisfies_requires_python() -> None:
    python = re.search(r"-python(\d+\.\d+)$", base_image())[1]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"{python}.0" in SpecifierSet(requires)


def test_dockerfile_installs_requirements_and_project_as_airflow_user() -> None:
    user = "root"
    pip_runs = []
    for keyword, args in dockerfile_instructions():
        if keyword == "USER":
            user = args
        elif keyword == "RUN" and re.search(r"\bpip install\b", args):
            pip_runs.append((user, args))
    assert pip_runs
    assert {user for user, _ in pip_runs} == {"airflow"}, "the image only allows pip as airflow"
    commands = " ".join(args for _, args in pip_runs)
    assert "requirements" in commands
    # apache-airflow is pinned to the image's own version so no requirement can move it.
    assert '"apache-airflow==${' in commands
    assert re.search(r"pip install [^&;]*--no-deps -e " + re.escape(AIRFLOW_HOME), commands)


def test_library_is_installed_where_compose_mounts_it() -> None:
    copies = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            *sources, target = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                copies[source.rstrip("/")] = target.rstrip("/")
    assert copies["include"] == bind_mounts(COMMON)["./include"] == f"{AIRFLOW_HOME}/include"
    assert copies["pyproject.toml"] == AIRFLOW_HOME


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore drops `path` (or a directory above it) from the build context."""
    ignored = False
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    for line in lines:
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _dockerignore_regex(line.lstrip("!").strip("/"))
        parts = path.strip("/").split("/")
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def copied_sources() -> list[str]:
    sources = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and "--from" not in args:
            *srcs, _target = [a for a in args.split() if not a.startswith("--")]
            sources += [s for s in srcs if not set(s) & set("*?[")]
    return sources


@pytest.mark.parametrize("source", copied_sources())
def test_copied_source_exists_and_is_in_build_context(source: str) -> None:
    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        ".git",
        ".env",
        "data",
        "data/raw/demo/events_1.csv",
        "logs",
        "include/fashion_recs/__pycache__",
        "include/fashion_recs.egg-info",
        ".pytest_cache",
        ".ruff_cache",
    ],
)
def test_dockerignore_excludes_local_state(path: str) -> None:
    assert dockerignored(path)


@pytest.mark.parametrize("path", ["include/fashion_recs/config.py", "config/retailer.yaml"])
def test_dockerignore_keeps_sources(path: str) -> None:
    assert not dockerignored(path)


# --------------------------------------------------------------------------------------------
# Spark: the standalone cluster the `engine: spark` stages run on
# --------------------------------------------------------------------------------------------


def requirements_pin(name: str) -> str:
    pins = re.findall(rf"(?im)^{re.escape(name)}\s*==\s*([\w.]+)\s*$", REQUIREMENTS.read_text())
    assert len(pins) == 1, f"requirements.txt must pin {name} exactly once"
    return pins[0]


def spark_base_image() -> str:
    (image,) = [
        args.split()[0]
        for keyword, args in dockerfile_instructions(SPARK_DOCKERFILE)
        if keyword == "FROM"
    ]
    return image


def master_port() -> int:
    command = SERVICES[SPARK_MASTER]["command"]
    return int(command[command.index("--port") + 1])


def test_spark_services_share_one_image_built_from_the_spark_dockerfile() -> None:
    images = {SERVICES[name]["image"] for name in SPARK_SERVICES}
    assert len(images) == 1 and images != {COMMON["image"]}
    for name in SPARK_SERVICES:
        build = SERVICES[name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == SPARK_DOCKERFILE


def test_spark_image_is_the_official_one_at_the_pinned_pyspark_version() -> None:
    """Driver (pyspark in the Airflow image) and cluster must run the same Spark."""
    match = re.fullmatch(r"apache/spark:(?P<version>\d+\.\d+\.\d+)", spark_base_image())
    assert match, f"unexpected Spark base image {spark_base_image()!r}"
    assert match["version"] == requirements_pin("pyspark")
    assert requirements_pin("apache-airflow-providers-apache-spark")


def test_spark_executors_get_the_drivers_python_and_the_pinned_pyarrow() -> None:
    """PySpark refuses executors whose Python minor version differs from the driver's (the
    Airflow image's), and the Spark stages write their Parquet with pyarrow on the executors."""
    instructions = dockerfile_instructions(SPARK_DOCKERFILE)
    args = dict(a.split("=", 1) for keyword, a in instructions if keyword == "ARG" and "=" in a)
    driver_python = re.search(r"-python(\d+\.\d+)$", base_image())[1]
    assert args["PYTHON_VERSION"] == driver_python
    runs = " ".join(a for keyword, a in instructions if keyword == "RUN")
    assert "requirements.txt" in " ".join(a for k, a in instructions if k == "COPY")
    for package in ("pyarrow", "numpy", "pandas"):
        assert package in runs, f"the executors' Python lacks {package}"
        assert requirements_pin(package)
    env = " ".join(a for keyword, a in instructions if keyword == "ENV")
    assert "PATH=/opt/spark-python/bin:" in env, "executors look for `python3` on PATH"


def test_master_and_worker_run_spark_standalone() -> None:
    master = command_text(SERVICES[SPARK_MASTER])
    worker = command_text(SERVICES[SPARK_WORKER])
    assert master.startswith("/opt/spark/bin/spark-class org.apache.spark.deploy.master.Master")
    assert worker.startswith("/opt/spark/bin/spark-class org.apache.spark.deploy.worker.Worker")
    assert f"spark://{SPARK_MASTER}:{master_port()}" in worker.split()
    assert SERVICES[SPARK_WORKER]["depends_on"][SPARK_MASTER] == {"condition": "service_healthy"}
    assert SERVICES[SPARK_MASTER]["healthcheck"]["test"]


def test_spark_workers_can_be_scaled() -> None:
    worker = SERVICES[SPARK_WORKER]
    assert "container_name" not in worker
    assert not host_ports(worker), "a published host port would clash with --scale"
    assert "container_name" not in SERVICES[SPARK_MASTER]


def test_spark_connection_points_at_the_master_for_every_airflow_container() -> None:
    """`spark_default` (the provider's connection, read by the DAG) names the cluster."""
    values = {env_of(SERVICES[name]).get("AIRFLOW_CONN_SPARK_DEFAULT") for name in AIRFLOW_SERVICES}
    assert len(values) == 1 and None not in values
    url = urlsplit(values.pop())
    assert (url.scheme, url.hostname, url.port) == ("spark", SPARK_MASTER, master_port())
    elsewhere = "spark://spark.example:7077?spark.executor.memory=4g"
    overridden = load_compose({"SPARK_MASTER_URL": elsewhere})["x-airflow-common"]
    assert env_of(overridden)["AIRFLOW_CONN_SPARK_DEFAULT"] == elsewhere


def test_spark_containers_mount_the_data_where_airflow_does() -> None:
    """Drivers hand executors absolute paths: raw exports to read, run directories to write."""
    data = bind_mounts(COMMON)["./data"]
    assert data == f"{AIRFLOW_HOME}/data"
    for name in SPARK_SERVICES:
        assert bind_mounts(SERVICES[name]).get("./data") == data, name


def test_spark_containers_run_as_the_airflow_user() -> None:
    """The driver's temporary dataset directories are private to it; executors write in them."""
    for name in SPARK_SERVICES:
        assert SERVICES[name]["user"] == COMMON["user"], name
    assert load_compose({"AIRFLOW_UID": "1234"})["services"][SPARK_WORKER]["user"] == "1234:0"


def test_airflow_image_carries_java_for_the_spark_driver() -> None:
    user, installs = "root", []
    for keyword, args in dockerfile_instructions():
        if keyword == "USER":
            user = args
        elif keyword == "RUN" and "apt-get install" in args:
            installs.append((user, args))
    java = [(user, args) for user, args in installs if "openjdk-17-jre-headless" in args]
    assert java, "docker/Dockerfile installs no Java: pyspark's driver needs one"
    assert {user for user, _ in java} == {"root"}
