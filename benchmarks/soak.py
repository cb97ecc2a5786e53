"""Soak run: the whole pipeline on Fashion-MNIST over S3 while faults are injected on a timer, next to
an undisturbed run of the same configuration and step budget (docs/reliability.md, "Soak run").

Each run is the real ``sslpipe run`` (Prefect flow, a local Ray with 2 Ray Train workers, MLflow's
server on SQLite) with its shards and checkpoints on S3: moto's server on 127.0.0.1 behind the
fault-injecting proxy of ``tests/s3_fault_proxy.py``. Both runs train the same number of steps
(``train.epochs``, no time budget), with a checkpoint every ``--checkpoint-every`` steps.

The disturbed run meets, every ``--every`` seconds, the next fault of this cycle:

* **throttle**: for 5 s every S3 request gets ``503 SlowDown`` (by time, as S3 throttles: a burst of
  N failed requests would be an outage of one request when nothing else is sending);
* **worker**: one Ray Train worker process is SIGKILLed (``ray.max_failures`` allows them);
* **outage**: the S3 endpoint answers nothing but ``503`` for ``--outage`` seconds;
* **flow** (once, when a checkpoint is on S3): the whole ``sslpipe run`` (flow, driver, its Ray) is
  SIGKILLed, and then run again, as an operator would;

a worker kill when no worker is running (ingest, evaluation) becomes a throttle. At registration
(``SSLPIPE_FAULTS`` holds the task after its MLflow run is logged and before the version exists) the
MLflow server is stopped, the task fails against it, and the server is back ``--mlflow-down``
seconds later, within the task's retries.

Run it alone on the machine: worker kills pick any Ray Train worker process on it.

Printed: the faults with their times, both runs' evaluation side by side with the difference, and
the checks: the planned steps were all trained, one model version per run, as many shard objects on
S3 as the manifest lists, at most ``ray.checkpoints_to_keep`` checkpoints left. Writes
``soak.json`` in the work folder.

    python benchmarks/soak.py                                  # ~25 min on a 2-core CPU
    python benchmarks/soak.py --limit 3000 --epochs 2 --every 30 --checkpoint-every 10   # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psutil
import s3fs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the servers and the proxy the tests use
from fashion_mnist import RECIPE  # noqa: E402  (this script's folder is on sys.path)
from s3_fault_proxy import FaultProxy  # noqa: E402

from servers import MlflowServer, MotoServer, kill_tree  # noqa: E402

SSLPIPE = Path(sys.executable).with_name("sslpipe")
BUCKET = "sslpipe-soak"
CYCLE = ("throttle", "worker", "outage", "flow", "worker", "throttle", "outage", "worker")


def settings(args: argparse.Namespace, work: Path, label: str, endpoint: str) -> list[str]:
    """The run's config as ``--set`` overrides: only the paths and names differ between the runs."""
    prefix = f"s3://{BUCKET}/{label}"
    return [
        f"work_dir={work / label}",
        "ingest.source.kind=fashion_mnist",
        f"ingest.source.path={args.path}",
        f"ingest.source.limit={args.limit}",
        f"ingest.output={prefix}/shards",
        f"storage.endpoint_url={endpoint}",
        "storage.region=us-east-1",
        *RECIPE,
        f"train.batch_size={args.batch_size}",
        f"train.epochs={args.epochs}",
        "train.warmup_epochs=1",
        f"train.checkpoint_every_steps={args.checkpoint_every}",
        "train.knn_monitor_samples=1000",
        f"ray.storage_path={prefix}/ray",
        "ray.num_workers=2",
        "ray.cpus_per_worker=1",
        "ray.max_failures=20",
        "ray.checkpoints_to_keep=2",
        "eval.fewshot_shots=[10]",
        "eval.fewshot_seeds=2",
        "eval.baselines=[]",
        "eval.plots=false",
        "mlflow.experiment=sslpipe-soak",
        f"mlflow.model_name=soak-{label}",
    ]


@dataclass
class Run:
    label: str
    wall_s: float = 0.0
    attempts: int = 0
    failed_attempts: list[str] = field(default_factory=list)  # each failed `sslpipe run`'s error line
    faults: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


def train_workers() -> list[psutil.Process]:
    """The live Ray Train worker processes on this machine (Ray names them in their title)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::RayTrainWorker"):
            found.append(proc)
    return found


def checkpoints_on_s3(fs: Any, label: str) -> list[str]:
    """Complete checkpoints (both files) of the run on S3."""
    fs.invalidate_cache()
    states = fs.glob(f"{BUCKET}/{label}/ray/*/step-*/state.pt")
    return sorted(p.rsplit("/", 1)[0] for p in states if fs.exists(p.rsplit("/", 1)[0] + "/meta.json"))


class Chaos:
    """Injects the cycle's faults into one run, every ``every`` seconds, from a thread."""

    def __init__(self, run: Run, proxy: FaultProxy, fs: Any, args: argparse.Namespace) -> None:
        self.run, self.proxy, self.fs, self.args = run, proxy, fs, args
        self.cli: subprocess.Popen[bytes] | None = None
        self.flow_killed = threading.Event()
        self.stop = threading.Event()
        self.start = time.monotonic()
        self._cycle = itertools.cycle(CYCLE)
        self._flow_done = False

    def note(self, kind: str, detail: str) -> None:
        at = time.monotonic() - self.start
        self.run.faults.append({"at_s": round(at, 1), "fault": kind, "detail": detail})
        print(f"  [{at:7.1f} s] {kind}: {detail}", flush=True)

    def loop(self) -> None:
        while not self.stop.wait(self.args.every):
            kind = next(self._cycle)
            if kind == "flow" and (
                self._flow_done or not train_workers() or not checkpoints_on_s3(self.fs, self.run.label)
            ):
                kind = "worker"  # the flow is killed once, while it trains with a checkpoint on S3
            if kind == "worker" and not train_workers():
                kind = "throttle"
            self.inject(kind)

    def inject(self, kind: str) -> None:
        if kind == "throttle":
            self.proxy.outage(5.0, code="SlowDown")
            self.note(kind, "S3 answers 503 SlowDown to everything for 5 s")
        elif kind == "outage":
            self.proxy.outage(self.args.outage)
            self.note(kind, f"S3 answers 503 to everything for {self.args.outage:.0f} s")
        elif kind == "worker":
            victim = train_workers()[-1]
            victim.send_signal(signal.SIGKILL)
            self.note(kind, f"SIGKILL Ray Train worker pid {victim.pid}")
        elif kind == "flow" and self.cli is not None:
            self._flow_done = True
            self.flow_killed.set()
            steps = [c.rsplit("-", 1)[-1] for c in checkpoints_on_s3(self.fs, self.run.label)]
            kill_tree(self.cli)
            self.note(kind, f"SIGKILL the whole `sslpipe run` (checkpoints on S3 at steps {steps})")


def mlflow_outage_at_registration(faults_file: Path, server: MlflowServer, down_s: float, chaos: Chaos) -> None:
    """When the register task holds at its pause point, stop MLflow, let the task go on (and fail),
    and start the server again ``down_s`` seconds later."""
    marker = Path(f"{faults_file}.register-logged.paused")
    while not chaos.stop.is_set():
        if marker.exists():
            server.stop()
            marker.unlink()
            chaos.note("mlflow", f"MLflow server stopped at registration for {down_s:.0f} s")
            time.sleep(down_s)
            server.start()
            faults_file.write_text("{}")  # once: a later flow run's registration is not held again
            chaos.note("mlflow", "MLflow server back")
            return
        time.sleep(0.2)


def run_pipeline(
    label: str,
    args: argparse.Namespace,
    work: Path,
    proxy: FaultProxy,
    direct: str,
    mlflow: MlflowServer,
    faulted: bool,
) -> Run:
    """One run through the proxy (``direct``: moto itself, for the checks)."""
    run = Run(label)
    overrides = settings(args, work, label, proxy.url)
    cli_args = ["run", *[a for s in overrides for a in ("--set", s)]]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow.uri,
        "AWS_ACCESS_KEY_ID": "soak",
        "AWS_SECRET_ACCESS_KEY": "soak",
        "PREFECT_HOME": str(work / label / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("PREFECT_API_URL", None)
    s3 = boto3.client("s3", endpoint_url=direct, region_name="us-east-1",
                      aws_access_key_id="soak", aws_secret_access_key="soak")  # fmt: skip
    fs = s3fs.S3FileSystem(key="soak", secret="soak", client_kwargs={"endpoint_url": direct})
    chaos = Chaos(run, proxy, fs, args)
    threads: list[threading.Thread] = []
    if faulted:
        faults_file = work / label / "faults.json"
        faults_file.parent.mkdir(parents=True, exist_ok=True)
        faults_file.write_text(json.dumps({"register:logged": "pause_first_attempt"}))
        env["SSLPIPE_FAULTS"] = str(faults_file)
        threads = [
            threading.Thread(target=chaos.loop, daemon=True),
            threading.Thread(
                target=mlflow_outage_at_registration, args=(faults_file, mlflow, args.mlflow_down, chaos), daemon=True
            ),
        ]
    (work / label).mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for thread in threads:
        thread.start()
    while True:
        run.attempts += 1
        log = work / label / f"attempt-{run.attempts}.log"
        print(f"{label}: sslpipe run, attempt {run.attempts} (log: {log})", flush=True)
        with log.open("wb") as out:
            chaos.cli = subprocess.Popen(
                [str(SSLPIPE), *cli_args], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            code = chaos.cli.wait()
        if chaos.flow_killed.is_set():
            chaos.flow_killed.clear()
            continue
        if code != 0:
            error = next((line for line in reversed(log.read_text().splitlines()) if line.startswith("error:")), "")
            run.failed_attempts.append(error or f"exit {code}")
            print(f"{label}: sslpipe run failed ({error or code}); run again, as an operator would", flush=True)
            if len(run.failed_attempts) > args.reruns:
                chaos.stop.set()
                raise SystemExit(f"{label}: sslpipe run failed {len(run.failed_attempts)} times; see {log}")
            continue
        break
    run.wall_s = time.monotonic() - start
    chaos.stop.set()
    proxy.up()
    records = work / label / "records"
    for stage in ("ingest", "pretrain", "evaluate", "register"):
        run.records[stage] = json.loads((records / f"{stage}.json").read_text())
    run.checks = checks(run, s3, mlflow)
    return run


def checks(run: Run, s3: Any, mlflow: MlflowServer) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    pretrain = run.records["pretrain"]
    ingest = run.records["ingest"]
    folder = ingest["shard_folder"].removeprefix(f"s3://{BUCKET}/")
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{folder}/manifest.json")["Body"].read().decode())
    listed = sum(len(split["shards"]) for split in manifest["splits"].values())
    objects = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{run.label}/shards/")
        for o in page.get("Contents", [])
    ]
    tars = [k for k in objects if k.endswith(".tar")]
    checkpoints = {
        o["Key"].rsplit("/", 2)[-2]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{run.label}/ray/")
        for o in page.get("Contents", [])
        if "/step-" in o["Key"]
    }
    client = MlflowClient(tracking_uri=mlflow.uri)
    name = run.records["register"]["model_name"]
    versions = client.search_model_versions(f"name='{name}'")
    run_id = run.records["register"]["run_id"]
    key = client.get_run(run_id).data.tags.get("sslpipe.idempotency_key")
    experiment = client.get_experiment_by_name("sslpipe-soak")
    assert experiment is not None, "the runs log to the sslpipe-soak experiment"
    mlflow_runs = client.search_runs([experiment.experiment_id], f"tags.`sslpipe.idempotency_key` = '{key}'")
    return {
        "steps": pretrain["steps"],
        "resumed_from": pretrain["resumed_from"],
        "ingest_reused": ingest["reused"],
        "shards_listed": listed,
        "shard_objects": len(tars),
        "checkpoints_left": len(checkpoints),
        "model_versions": len(versions),
        "mlflow_runs": len(mlflow_runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="/usr/share/datasets/fashion-mnist", help="Folder with the IDX files.")
    parser.add_argument("--limit", type=int, default=10000, help="Images of each split to use (test: 10,000 at most).")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--checkpoint-every", type=int, default=100, help="train.checkpoint_every_steps.")
    parser.add_argument("--every", type=float, default=60.0, help="Seconds between faults.")
    parser.add_argument("--outage", type=float, default=20.0, help="Seconds of each S3 outage.")
    parser.add_argument("--mlflow-down", type=float, default=20.0, help="Seconds MLflow is down at registration.")
    parser.add_argument("--work", default=None, help="Work folder (default: a temporary one, kept).")
    parser.add_argument("--reruns", type=int, default=2, help="Re-runs after a failed `sslpipe run`.")
    parser.add_argument("--only", choices=["undisturbed", "disturbed"], help="Run one of the two.")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(args.work or tempfile.mkdtemp(prefix="sslpipe-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}")

    moto = MotoServer().start()
    mlflow = MlflowServer(work / "mlflow").start()
    try:
        boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                     aws_access_key_id="soak", aws_secret_access_key="soak").create_bucket(Bucket=BUCKET)  # fmt: skip
        runs: dict[str, Run] = {}
        with FaultProxy(moto.endpoint) as proxy:
            for label, faulted in (("undisturbed", False), ("disturbed", True)):
                if args.only in (None, label):
                    runs[label] = run_pipeline(label, args, work, proxy, moto.endpoint, mlflow, faulted)
        report(runs, work)
    finally:
        mlflow.stop()
        moto.stop()


def report(runs: dict[str, Run], work: Path) -> None:
    print()
    for run in runs.values():
        c = run.checks
        print(
            f"{run.label}: {run.wall_s / 60:.1f} min, {run.attempts} `sslpipe run` "
            f"({len(run.failed_attempts)} failed), {len(run.faults)} faults, "
            f"steps {c['steps']}, resumed from {c['resumed_from']}, shard objects {c['shard_objects']} "
            f"(manifest lists {c['shards_listed']}), checkpoints left {c['checkpoints_left']}, "
            f"model versions {c['model_versions']}, MLflow runs {c['mlflow_runs']}"
        )
    labels = list(runs)
    metrics = [run.records["evaluate"]["metrics"] for run in runs.values()]
    keys = sorted(k for k in metrics[0] if "/ssl/" in k and k.endswith(("top1", "rankme")))
    print(f"\n{'metric':<40}" + "".join(f"{label:>14}" for label in labels) + ("      diff" if len(runs) == 2 else ""))
    for key in keys:
        values = [m.get(key, float("nan")) for m in metrics]
        diff = f"{values[1] - values[0]:+10.4f}" if len(values) == 2 else ""
        print(f"{key:<40}" + "".join(f"{v:>14.4f}" for v in values) + diff)
    out = {label: run.__dict__ for label, run in runs.items()}
    (work / "soak.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"\nresults: {work / 'soak.json'}")


if __name__ == "__main__":
    main()
