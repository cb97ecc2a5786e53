"""The operations files agree with the code: infra/prefect.yaml declares the deployments `sslpipe serve`
builds, the Compose team setup is complete, loopback-only and free of credentials, and
docs/operations.md uses real commands, deployments, work pools and images.

No servers, no Docker: files are read as YAML and text, deployments are built offline, and the Prefect
CLI is parsed in-process.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.resources
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import yaml
from test_cluster_configs import _check_call, _code_blocks, _expected_images
from typer.testing import CliRunner

from conftest import REPO, SSLPIPE
from flows.deployments import NIGHTLY_CRON, TIMEZONE, DeploymentSpec, baked_parameters, deployment_specs
from sslcore.config import PipelineConfig, load_config

PREFECT_YAML = REPO / "infra" / "prefect.yaml"
COMPOSE = REPO / "infra" / "compose.yaml"
COMPOSE_ENV = REPO / "infra" / "compose.env.example"
OPERATIONS_DOCS = REPO / "docs" / "operations.md"

# --------------------------------------------------------------------------- helpers


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _specs() -> dict[str, DeploymentSpec]:
    return {spec.name: spec for spec in deployment_specs()}


def _declared() -> dict[str, dict[str, Any]]:
    deployments = _load(PREFECT_YAML)["deployments"]
    names = [d["name"] for d in deployments]
    assert len(names) == len(set(names)), f"infra/prefect.yaml: duplicate deployment names {names}"
    return {d["name"]: d for d in deployments}


def _work_pools() -> dict[str, dict[str, Any]]:
    """``definitions.work_pools`` of infra/prefect.yaml: the process pool and the Kubernetes variant."""
    return _load(PREFECT_YAML)["definitions"]["work_pools"]


def _resolve(entrypoint: str) -> Any:
    """``flows/pipeline.py:pipeline`` -> the object it names, imported as Prefect would from the repo root."""
    path, _, name = entrypoint.partition(":")
    assert (REPO / path).is_file(), f"{entrypoint}: no file {path}"
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def _worker_metadata(kind: str) -> dict[str, Any]:
    """A work pool type's default base job template, from the metadata bundled with Prefect (offline)."""
    views = importlib.resources.files("prefect.server.api.collections_data") / "views"
    metadata = json.loads((views / "aggregate-worker-metadata.json").read_text())
    collection = {"kubernetes": "prefect-kubernetes", "process": "prefect"}[kind]
    return metadata[collection][kind]["default_base_job_configuration"]


def _services() -> dict[str, dict[str, Any]]:
    return _load(COMPOSE)["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment``, list or mapping form, as raw (uninterpolated) strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in COMPOSE_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{COMPOSE_ENV.name}: '{line}' is not KEY=value"
            pairs[key.strip()] = value.strip()
    return pairs


COMPOSE_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
SECRETISH = re.compile(r"secret|password|token|access_key", re.I)
REF = "ENVREF"  # stands for a ${...} reference, whose message may hold a '/', when parsing a URL


def _url(value: str) -> Any:
    """A compose value as a URL, each ``${VAR:?message}`` replaced by ``REF``."""
    return urlsplit(COMPOSE_REF.sub(REF, value))


def _ignored(path: str, ignore_file: Path) -> bool:
    """Whether a .gitignore/.dockerignore (no negations) ignores ``path``."""
    parts = PurePosixPath(path).parts
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
    for pattern in (line.strip() for line in ignore_file.read_text().splitlines()):
        if not pattern or pattern.startswith("#"):
            continue
        pattern = pattern.removeprefix("/")
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatch(s, pattern[3:]) for s in suffixes)
        elif "/" not in pattern and ignore_file.name == ".gitignore":  # git: a bare name matches at any depth
            matched = fnmatch.fnmatch(parts[-1], pattern)
        else:
            matched = fnmatch.fnmatch(path, pattern)
        if matched:
            return True
    return False


def _commands(markdown: str, program: str) -> list[list[str]]:
    """The arguments after ``program`` of every call in the markdown's code blocks and inline code
    (where a bare ``program`` is just its name)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    snippets = [(block, True) for block in _code_blocks(markdown)]
    snippets += [(span, False) for span in re.findall(r"`([^`\n]+)`", prose)]
    calls = []
    for snippet, in_block in snippets:
        for line in snippet.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", ";", "|"):
                    if segment[:1] == [program] and (in_block or len(segment) > 1):
                        calls.append(segment[1:])
                    segment = []
                else:
                    segment.append(token)
    return calls


def _prefect_options(tokens: list[str]) -> tuple[tuple[str, ...], list[str], set[str]]:
    """``(command, remaining tokens, its option names)`` from Prefect's own CLI, parsed in-process."""
    from prefect.cli._app import _app  # the cyclopts app behind the `prefect` command

    chain, apps, rest = _app.parse_commands(tokens)
    try:
        arguments = apps[-1].assemble_argument_collection()
    except ValueError:
        pytest.fail(f"'prefect {' '.join(tokens)}': '{' '.join(chain)}' is not a prefect command")
    options = {name for argument in arguments for name in argument.names}
    return tuple(chain), list(rest), options | {"--help", "--profile", "--prompt", "--no-prompt"}


# --------------------------------------------------------------------------- the deployments


@pytest.mark.parametrize("path", [PREFECT_YAML, COMPOSE], ids=lambda p: str(p.relative_to(REPO)))
def test_operations_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(_load(path), dict)


def test_prefect_yaml_is_valid_for_prefect_deploy() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel  # the model `prefect deploy` validates with

    model = PrefectYamlModel.model_validate(_load(PREFECT_YAML))
    assert model.pull, "keep the pull step: workers run the flows from $SSLPIPE_REPO"
    assert len(model.deployments) == len(deployment_specs())


def test_prefect_yaml_declares_the_served_deployments() -> None:
    declared, specs = _declared(), _specs()
    assert set(declared) == set(specs), "infra/prefect.yaml and flows/deployments.py list different deployments"
    for name, spec in specs.items():
        deployment = declared[name]
        assert deployment["entrypoint"] == spec.entrypoint, name
        assert _resolve(deployment["entrypoint"]) is spec.flow, f"{name}: entrypoint is not the spec's flow"
        assert deployment["description"] == spec.description, f"{name}: description differs from the spec"
        assert tuple(deployment["tags"]) == spec.tags, name
        assert deployment["work_pool"]["name"] == _work_pools()["process"]["name"] == "sslpipe-process", name
        limit = deployment["concurrency_limit"]
        assert limit == {"limit": spec.concurrency_limit, "collision_strategy": "ENQUEUE"}, name


def test_prefect_yaml_parameters_are_parameters_of_the_flows() -> None:
    from prefect import Flow

    for name, deployment in _declared().items():
        flow = _resolve(deployment["entrypoint"])
        assert isinstance(flow, Flow), deployment["entrypoint"]
        accepted = set(flow.parameters.properties)
        assert set(deployment.get("parameters") or {}) <= accepted, f"{name}: not parameters of {flow.name}"
        assert not set(flow.parameters.required or []), f"{flow.name}: every flow must run with no parameters"


def test_schedules_match_the_spec_and_are_valid() -> None:
    from prefect.schedules import validate_cron_string

    ZoneInfo(TIMEZONE)
    assert validate_cron_string(NIGHTLY_CRON)
    declared = _declared()
    for name, spec in _specs().items():
        schedules = declared[name].get("schedules")
        assert schedules is not None, f"{name}: write `schedules: []` (else `prefect deploy` prompts for one)"
        if spec.cron is None:
            assert schedules == [], f"{name}: the spec has no schedule"
        else:
            assert [(s["cron"], s["timezone"], s.get("active", True)) for s in schedules] == [
                (spec.cron, TIMEZONE, True)
            ], name
    assert [spec.name for spec in deployment_specs() if spec.cron] == ["nightly"]
    assert _specs()["nightly"].flow.name == "sslpipe" and _specs()["nightly"].cron == NIGHTLY_CRON


def test_serve_builds_the_deployments_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # Prefect writes entrypoints relative to the working directory
    config = load_config(None, ["train.epochs=3"])
    specs = deployment_specs(cron=None)
    from flows.deployments import runner_deployments

    deployments = runner_deployments(specs, config)
    assert [d.name for d in deployments] == [s.name for s in specs]
    for deployment, spec in zip(deployments, specs, strict=True):
        assert deployment.entrypoint == spec.entrypoint
        assert deployment.flow_name == spec.flow.name
        assert deployment.schedules == [], "--cron none must leave every deployment unscheduled"
        assert set(deployment.parameters) <= set(spec.flow.parameters.properties)
        assert PipelineConfig.model_validate(deployment.parameters["config"]) == config
        assert deployment.concurrency_limit == 1 and deployment.concurrency_options is not None
        assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
    (nightly,) = [d for d in runner_deployments(deployment_specs(), config) if d.name == "nightly"]
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (NIGHTLY_CRON, TIMEZONE)


@pytest.mark.parametrize("key", ["access_key_id", "secret_access_key"])
def test_baked_parameters_refuse_storage_credentials(key: str) -> None:
    config = load_config(None, [f"storage.{key}=not-a-real-credential"])
    with pytest.raises(ValueError, match=rf"storage\.{key}.*AWS_ACCESS_KEY_ID"):
        baked_parameters(config)
    allowed = load_config(None, ["storage.profile=team", "storage.endpoint_url=http://127.0.0.1:9000"])
    assert baked_parameters(allowed)["config"]["storage"]["profile"] == "team"


# --------------------------------------------------------------------------- the serve command


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What `sslpipe serve` hands to ``prefect.serve`` (which is not run), with a server URL configured."""
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    calls: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **_: calls.append(deployments))
    monkeypatch.chdir(REPO)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        yield calls


def _invoke(*args: str) -> Any:
    from sslpipe.cli import app

    return CliRunner().invoke(app, ["serve", *args])


def test_serve_help_exits_0() -> None:
    result = subprocess.run([str(SSLPIPE), "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--cron" in result.stdout and "--config" in result.stdout and "--set" in result.stdout


def test_serve_refuses_credentials_in_the_config(served: list[Any]) -> None:
    result = _invoke("--set", "storage.secret_access_key=abcd1234-not-real")
    assert result.exit_code == 2, result.output
    assert "storage.secret_access_key" in result.output and "AWS_SECRET_ACCESS_KEY" in result.output
    assert "abcd1234-not-real" not in result.output
    assert served == [], "nothing may be served"


def test_serve_passes_the_config_and_schedule(served: list[Any]) -> None:
    result = _invoke("--set", "train.epochs=3", "--cron", "none")
    assert result.exit_code == 0, result.output
    (deployments,) = served
    assert [d.name for d in deployments] == [s.name for s in deployment_specs()]
    assert all(d.schedules == [] for d in deployments)
    assert {d.parameters["config"]["train"]["epochs"] for d in deployments} == {3}
    result = _invoke("--cron", "15 3 * * 1-5")
    assert result.exit_code == 0, result.output
    nightly = next(d for d in served[-1] if d.name == "nightly")
    assert nightly.schedules[0].schedule.cron == "15 3 * * 1-5"


def test_serve_rejects_a_bad_cron_and_a_missing_server(served: list[Any]) -> None:
    result = _invoke("--cron", "every night")
    assert result.exit_code == 2 and "--cron" in result.output, result.output
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = _invoke()
    assert result.exit_code == 2 and "PREFECT_API_URL" in result.output, result.output
    assert served == []


# --------------------------------------------------------------------------- the Kubernetes variant


def test_kubernetes_work_pool_runs_the_project_image_with_real_job_variables() -> None:
    pool = _work_pools()["kubernetes"]
    assert pool["name"] == "sslpipe-k8s"
    job_variables = pool["job_variables"]
    known = set(_worker_metadata("kubernetes")["variables"]["properties"])
    assert set(job_variables) <= known, f"not Kubernetes job variables: {set(job_variables) - known}"
    cpu, gpu = _expected_images()
    assert re.fullmatch(rf"(?:\S+/)?(?:{re.escape(cpu)}|{re.escape(gpu)})", job_variables["image"]), (
        f"job variable image {job_variables['image']} is not {cpu} or {gpu} (Dockerfile)"
    )
    env = job_variables["env"]
    assert {"RAY_ADDRESS", "MLFLOW_TRACKING_URI"} <= set(env)
    assert not [key for key in env if SECRETISH.search(key) or key.startswith("AWS_")], (
        "credentials come from a Kubernetes Secret or IRSA, not job variables"
    )


def test_docs_patch_a_real_path_of_the_kubernetes_job_template() -> None:
    patches = re.findall(r"jq '(\.job_configuration[^ =]*) = ", OPERATIONS_DOCS.read_text())
    assert patches, "docs/operations.md shows no jq patch of the base job template"
    template = _worker_metadata("kubernetes")["job_configuration"]
    for path in patches:
        node: Any = {"job_configuration": template}
        *parents, _ = re.findall(r"\.(\w+)|\[(\d+)\]", path)
        for key, index in parents:
            node = node[int(index)] if index else node[key]
        assert isinstance(node, dict), path


def test_docs_name_the_project_images() -> None:
    cpu, gpu = _expected_images()
    tags = set(re.findall(r"\bsslpipe:[\w.-]+", OPERATIONS_DOCS.read_text()))
    assert tags and tags <= {cpu, gpu}, f"docs/operations.md names images {tags}, the Dockerfile's are {cpu}, {gpu}"


# --------------------------------------------------------------------------- the Compose team setup


def test_compose_has_the_team_services_each_with_an_image() -> None:
    services = _services()
    assert {"postgres", "minio", "minio-buckets", "prefect-server", "mlflow"} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image and no build"
        images = [service.get("image") or ""]
        images += re.findall(r"^FROM\s+(\S+)", (service.get("build") or {}).get("dockerfile_inline", ""), re.M)
        for image in filter(None, images):
            tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
            assert tag and tag != "latest", f"{name}: pin a tag for {image}"


def test_compose_publishes_ports_on_loopback_only() -> None:
    published = 0
    for name, service in _services().items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+(/tcp)?", str(port)), f"{name}: '{port}' is not 127.0.0.1:"
    assert published, "nothing is published"


def test_compose_mlflow_is_the_installed_version_on_postgres_and_minio() -> None:
    import mlflow

    service = _services()["mlflow"]
    (base,) = re.findall(r"^FROM\s+(\S+)", service["build"]["dockerfile_inline"], re.M)
    match = re.fullmatch(r"ghcr\.io/mlflow/mlflow:v(\d+)\.(\d+)\.\d+", base)
    assert match, f"{base} is not ghcr.io/mlflow/mlflow:v<version>"
    installed = mlflow.__version__.split(".")[:2]
    assert list(match.groups()) == installed, f"MLflow image {base} vs installed mlflow {mlflow.__version__}"
    assert re.search(r"psycopg2.*boto3|boto3.*psycopg2", service["build"]["dockerfile_inline"])
    env = _environment(service)
    store = _url(env["MLFLOW_BACKEND_STORE_URI"])
    assert (store.scheme, store.hostname, store.path) == ("postgresql", "postgres", "/mlflow"), store
    assert _url(env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    command = " ".join(service["command"])
    (bucket,) = re.findall(r"--artifacts-destination[= ]s3://([\w.-]+)", command)
    assert f"local/{bucket}" in " ".join(_services()["minio-buckets"]["command"]), f"no bucket {bucket} is created"
    hosts = re.search(r"--allowed-hosts[= ](\S+)", command)
    assert hosts and any(fnmatch.fnmatch("mlflow:5000", h) for h in hosts[1].split(",")), (
        "MLflow 3 rejects Host headers it does not allow: the worker calls it as mlflow:5000"
    )


def test_compose_prefect_server_uses_postgres() -> None:
    import prefect

    service = _services()["prefect-server"]
    image = re.fullmatch(r"prefecthq/prefect:(\d+)[\w.-]*", service["image"])
    assert image and image[1] == prefect.__version__.split(".")[0], service["image"]
    assert service["command"][:3] == ["prefect", "server", "start"] and "0.0.0.0" in service["command"]
    url = _url(_environment(service)["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert url.scheme == "postgresql+asyncpg" and url.hostname == "postgres" and url.path == "/prefect"
    init = (REPO / "infra" / "compose" / "postgres-init.sh").read_text()
    assert "CREATE DATABASE prefect" in init and "CREATE DATABASE mlflow" in init


def test_compose_credentials_come_from_the_env_file() -> None:
    text = COMPOSE.read_text()
    refs = COMPOSE_REF.findall(text)
    example = _env_example()
    used = {name for name, _ in refs}
    assert used == set(example), f"used in compose.yaml {sorted(used)} vs in {COMPOSE_ENV.name} {sorted(example)}"
    for name, modifier in refs:
        assert modifier.startswith(":?"), f"${{{name}}}: write ${{{name}:?...}} so Compose stops when it is unset"
    for key, value in example.items():
        if SECRETISH.search(key):
            assert value.startswith("change-me"), f"{COMPOSE_ENV.name}: {key} must be an obvious placeholder"
    for name, service in _services().items():
        for key, value in _environment(service).items():
            if SECRETISH.search(key):
                assert re.fullmatch(COMPOSE_REF.pattern, value), f"{name}: {key} must be ${{VAR:?...}} from .env"
            password = _url(value).password if "://" in value else None
            assert password in (None, REF), f"{name}: {key} has a literal password in its URL"


def test_the_env_file_stays_out_of_git_and_the_image() -> None:
    # The worker's build context is the repository: without .dockerignore, COPY . would bake infra/.env in.
    for ignore_file in (REPO / ".gitignore", REPO / ".dockerignore"):
        assert _ignored("infra/.env", ignore_file), f"{ignore_file.name} does not ignore infra/.env"
        assert not _ignored("infra/compose.env.example", ignore_file), ignore_file.name


def test_compose_healthchecks_and_start_order() -> None:
    services = _services()
    for name in ("postgres", "minio", "prefect-server", "mlflow"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits on {dependency}'s missing healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {dependency}: {condition}"
                assert services[dependency].get("restart") == "no", f"{dependency} is not a one-shot"
            assert set(services[dependency].get("profiles", [])) <= set(service.get("profiles", [])), (
                f"{name} depends on {dependency}, which only starts with a profile"
            )
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_mounts_files_that_exist() -> None:
    for name, service in _services().items():
        build = service.get("build")
        if build:
            context = COMPOSE.parent / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context}"
            if isinstance(build, dict) and "dockerfile_inline" not in build:
                assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"


def test_compose_telemetry_is_off() -> None:
    services = _services()
    assert _environment(services["prefect-server"]).get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
    assert _environment(services["mlflow"]).get("MLFLOW_DISABLE_TELEMETRY") == "true"
    for name in ("prefect-server", "mlflow"):
        assert _environment(services[name]).get("DO_NOT_TRACK") == "true", name


def test_compose_worker_runs_the_project_image_on_the_process_pool() -> None:
    services = _services()
    worker = services["worker"]
    cpu, _ = _expected_images()
    assert worker["image"] == cpu and (COMPOSE.parent / worker["build"]["context"]).resolve() == REPO
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == _work_pools()["process"]["name"]
    env = _environment(worker)
    for key, service in (("PREFECT_API_URL", "prefect-server"), ("MLFLOW_TRACKING_URI", "mlflow")):
        url = _url(env[key])
        assert url.hostname == service, key
        published = {str(p).rsplit(":", 1)[1] for p in services[service]["ports"]}
        assert str(url.port) in published, f"{key}: port {url.port} is not {service}'s"
    assert _url(env["AWS_ENDPOINT_URL"]).hostname == "minio"


# --------------------------------------------------------------------------- docs/operations.md


def test_docs_sslpipe_commands_are_real() -> None:
    calls = _commands(OPERATIONS_DOCS.read_text(), "sslpipe")
    assert {"run", "serve"} <= {call[0] for call in calls if call}
    for call in calls:
        _, config = _check_call(call, "docs/operations.md")
        assert config is None or config.parent == REPO or config.is_file(), f"--config {config} does not exist"


def test_docs_prefect_commands_are_real() -> None:
    calls = _commands(OPERATIONS_DOCS.read_text(), "prefect")
    assert calls, "docs/operations.md shows no prefect command"
    pools = {pool["name"] for pool in _work_pools().values()}
    runnable = {f"{spec.flow.name}/{spec.name}" for spec in deployment_specs()}
    for call in calls:
        command, rest, options = _prefect_options(call)
        for token in rest:
            if token.startswith("-"):
                assert token.partition("=")[0] in options, f"'prefect {' '.join(call)}': no option {token}"
        if command == ("deploy",) and "--prefect-file" in rest:
            assert (REPO / rest[rest.index("--prefect-file") + 1]).is_file(), call
        if command == ("deployment", "run"):
            assert rest[0] in runnable, f"'prefect {' '.join(call)}': no deployment {rest[0]}"
        if command == ("worker", "start"):
            assert rest[rest.index("--pool") + 1] in pools, call
        if command == ("work-pool", "create"):
            pool, kind = rest[0], rest[rest.index("--type") + 1]
            assert (pool, kind) in {("sslpipe-process", "process"), ("sslpipe-k8s", "kubernetes")}, call
            assert pool in pools, call
    documented = set(re.findall(r"^\| `([\w-]+/[\w-]+)` \|", OPERATIONS_DOCS.read_text(), re.M))
    assert documented == runnable, "the deployments table of docs/operations.md is out of date"


def test_docs_compose_commands_are_real() -> None:
    compose = _load(COMPOSE)
    profiles = {p for service in compose["services"].values() for p in service.get("profiles", [])}
    calls = [call[1:] for call in _commands(OPERATIONS_DOCS.read_text(), "docker") if call[:1] == ["compose"]]
    assert calls, "docs/operations.md shows no docker compose command"
    for call in calls:
        i, positional = 0, []
        while i < len(call):
            token = call[i]
            if token in ("-f", "--file"):
                assert (REPO / call[i + 1]) == COMPOSE, call
                i += 1
            elif token == "--profile":
                assert call[i + 1] in profiles, f"no profile {call[i + 1]}"
                i += 1
            elif not token.startswith("-"):
                positional.append(token)
            i += 1
        assert "-f" in call, f"'docker compose {' '.join(call)}' needs -f infra/compose.yaml"
        command, *services = positional
        assert command in ("up", "down", "ps", "logs", "pull", "build", "restart", "stop"), call
        assert set(services) <= set(compose["services"]), call


def test_readme_links_the_operations_docs() -> None:
    assert "(docs/operations.md)" in (REPO / "README.md").read_text()
