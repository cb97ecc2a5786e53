"""Registration and promotion against a real MLflow tracking server process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from registry_helpers import config as base_config
from registry_helpers import training_run

from sslcore.gates import PromotionConflict, PromotionError
from tasks.promote import promote, rollback
from tasks.register import register

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def model_name(request, monkeypatch) -> str:
    """A registered model (and experiment) of its own for each test, on the shared server."""
    global NAME
    NAME = f"enc-{request.node.name.replace('_', '-')[5:40]}"
    return NAME


def config(work, *extra):
    return base_config(work, f"mlflow.model_name={NAME}", f"mlflow.experiment={NAME}", *extra)


def _versions(client: MlflowClient) -> list[str]:
    return sorted(v.version for v in client.search_model_versions(f"name = '{NAME}'"))


def _alias(client: MlflowClient, alias: str) -> str:
    return str(client.get_model_version_by_alias(NAME, alias).version)


def test_register_is_idempotent_and_loadable_from_a_fresh_process(mlflow_server, tmp_path) -> None:
    secret = "sentinel/SECRET+value/0123456789"
    cfg = config(tmp_path / "work", f"storage.secret_access_key={secret}", "storage.access_key_id=AKIASENTINELKEY")
    evaluation = training_run(cfg, "run-a", knn=0.8)
    first = register.fn(cfg, evaluation)
    again = register.fn(cfg, evaluation)  # a retry, or a re-run of the stage
    client = MlflowClient(mlflow_server.uri)
    assert (again.run_id, again.version, again.reused) == (first.run_id, first.version, True)
    assert _versions(client) == ["1"]
    runs = client.search_runs([first.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    version = client.get_model_version(NAME, "1")
    assert version.aliases == ["candidate"]
    assert version.tags["sslpipe.ray_run_name"] == "run-a" and "knn_k20_top1 = 0.8000" in version.description
    assert {a.path for a in client.list_artifacts(first.run_id)} >= {"model_card.md", "config.json", "timm", "data"}
    run = client.get_run(first.run_id)
    exposed = [*run.data.params.values(), *run.data.tags.values(), *version.tags.values(), version.description]
    exposed += [
        (tmp_path / "dl" / name).read_text()
        for name in ("model_card.md", "config.json")
        if client.download_artifacts(first.run_id, name, str((tmp_path / "dl").mkdir(exist_ok=True) or tmp_path / "dl"))
    ]
    assert run.data.params["storage.secret_access_key"] == "**********"
    assert not [text for text in exposed if secret in text or "AKIASENTINELKEY" in text]

    code = (
        "import mlflow, numpy as np, sys\n"
        f"m = mlflow.pyfunc.load_model('models:/{NAME}@candidate')\n"
        "out = m.predict(np.zeros((3, 20, 12, 1), dtype=np.uint8))\n"
        "print(out.shape, out.dtype, bool(np.isfinite(out).all()))\n"
    )
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(3, 512) float32 True")


def test_a_crashed_registration_leaves_no_second_run(mlflow_server, tmp_path) -> None:
    import mlflow

    from tasks.register import KEY_TAG, idempotency_key

    cfg = config(tmp_path / "work")
    evaluation = training_run(cfg, "run-crash", knn=0.8)
    mlflow.set_tracking_uri(mlflow_server.uri)
    exp = mlflow.set_experiment(NAME)
    with mlflow.start_run(tags={KEY_TAG: idempotency_key(evaluation)}):  # died before the model was logged
        mlflow.log_param("train.epochs", "10")
    record = register.fn(cfg, evaluation)
    client = MlflowClient(mlflow_server.uri)
    live = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in live] == [record.run_id] and not record.reused
    assert _versions(client) == ["1"]


def test_promotion_gates_rollback_and_records(mlflow_server, tmp_path) -> None:
    client = MlflowClient(mlflow_server.uri)
    cfg = config(tmp_path / "work")
    register.fn(cfg, training_run(cfg, "v1", knn=0.80))
    first = promote(cfg)
    assert first.decision == "promoted" and first.champion_after == "1"  # beats its random-init baseline

    register.fn(cfg, training_run(cfg, "v2", knn=0.85, seed=1))
    better = promote(cfg)
    assert (better.decision, better.champion_before, better.champion_after) == ("promoted", "1", "2")
    assert _alias(client, "champion") == "2" and _alias(client, "previous-champion") == "1"
    gates = json.loads(client.get_model_version(NAME, "2").tags["sslpipe.promotion_gates"])
    assert gates["promote"] and gates["gates"][0]["reference"] == pytest.approx(0.80)
    assert client.get_model_version(NAME, "1").tags["sslpipe.promotion_decision"].startswith("challenged by 2")

    register.fn(cfg, training_run(cfg, "v3", knn=0.90, linear=0.70, seed=2))  # better kNN, but linear regresses
    worse = promote(cfg)
    assert worse.decision == "rejected" and "guard digits/ssl/linear_top1" in worse.reason
    assert _alias(client, "champion") == "2" and _alias(client, "candidate") == "3"
    assert client.get_model_version(NAME, "3").tags["sslpipe.promotion_decision"] == "rejected"

    back = rollback(cfg)
    assert (
        back.champion_after == "1" and _alias(client, "champion") == "1" and _alias(client, "previous-champion") == "2"
    )
    assert not client.get_registered_model(NAME).tags.get("sslpipe.promotion_lock")


def test_champion_scored_on_other_data_is_reevaluated(mlflow_server, tmp_path) -> None:
    """Different evaluation data: the champion is re-scored on the candidate's datasets first."""
    client = MlflowClient(mlflow_server.uri)
    cfg = config(tmp_path / "work", "eval.fewshot_shots=[1]", "eval.fewshot_seeds=1")
    register.fn(cfg, training_run(cfg, "old-data", knn=0.99, eval_fingerprint="0" * 64))  # looks unbeatable
    assert promote(cfg).champion_after == "1"
    register.fn(cfg, training_run(cfg, "new-data", knn=0.95, linear=0.99, seed=1))
    record = promote(cfg)
    primary = record.gates[0]
    assert primary["reference"] != pytest.approx(0.99), "the champion's stale score must not be used"
    assert 0.0 < primary["reference"] < 0.95  # an untrained resnet10t, re-scored for real on digits
    assert record.decision == "promoted", record.reason
    tags = client.get_model_version(NAME, "1").tags
    assert any(key.startswith("sslpipe.reevaluated.") for key in tags)


def test_first_model_must_beat_random_init(mlflow_server, tmp_path) -> None:
    cfg = config(tmp_path / "work")
    register.fn(cfg, training_run(cfg, "weak", knn=0.55, baseline=0.60))
    record = promote(cfg)
    assert record.decision == "rejected" and record.champion_after is None
    with pytest.raises(PromotionError, match="no 'previous-champion' version"):
        rollback(cfg)


def test_racing_promotions_leave_consistent_aliases(mlflow_server, tmp_path) -> None:
    cfg = config(tmp_path / "work")
    register.fn(cfg, training_run(cfg, "v1", knn=0.8))
    results: list[object] = []

    def run() -> None:
        try:
            results.append(promote(cfg).decision)
        except PromotionConflict as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = MlflowClient(mlflow_server.uri)
    assert _alias(client, "champion") == "1"
    assert "promoted" in results and all(
        r in ("promoted", "unchanged") or isinstance(r, PromotionConflict) for r in results
    )
    assert not client.get_registered_model(NAME).tags.get("sslpipe.promotion_lock")


def test_server_restart_between_registration_and_promotion(mlflow_server, tmp_path, prefect_server) -> None:
    """The server is down when promotion starts; Prefect's retry succeeds once it is back."""
    from flows.promote import promote_flow

    cfg = config(tmp_path / "work")
    register.fn(cfg, training_run(cfg, "v1", knn=0.8))
    mlflow_server.stop()
    restart = threading.Timer(8.0, mlflow_server.start)
    restart.start()
    record = promote_flow(cfg)
    restart.join()
    assert record.decision == "promoted"
    assert _alias(MlflowClient(mlflow_server.uri), "champion") == "1"


def test_server_stopping_during_registration(mlflow_server, tmp_path, prefect_server, monkeypatch) -> None:
    """The server stops while registration is half done (the run logged, no version yet) and comes
    back: Prefect's retry of the task completes it, with one run and one version."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.faults import FAULTS_ENV, pause_marker

    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"register:logged": "pause_first_attempt"}))
    marker = pause_marker(faults, "register:logged")
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the outage reaches the task at once
    cfg = config(tmp_path / "work")
    evaluation = training_run(cfg, "run-outage", knn=0.8)
    outage_log: list[str] = []

    def outage() -> None:
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        mlflow_server.stop()
        outage_log.append("stopped")
        marker.unlink()  # registration goes on, against a stopped server
        time.sleep(3)
        mlflow_server.start()
        outage_log.append("restarted")

    @flow(name="register-through-an-outage")
    def register_flow():  # retried every second (the task's own delays are 5, 15, 45 s) to keep the test short
        return register.with_options(retries=60, retry_delay_seconds=1)(cfg, evaluation, return_state=True)

    thread = threading.Thread(target=outage)
    thread.start()
    task_state = register_flow()
    thread.join()
    assert outage_log == ["stopped", "restarted"]
    record = task_state.result()
    with get_client(sync_client=True) as client:
        assert client.read_task_run(task_state.state_details.task_run_id).run_count >= 2  # it failed, then retried
    ml = MlflowClient(mlflow_server.uri)
    assert _versions(ml) == ["1"] and _alias(ml, "candidate") == "1"
    runs = ml.search_runs([record.experiment_id])
    assert [r.info.run_id for r in runs] == [record.run_id] and not record.reused


def test_unreachable_server_is_a_clear_error(mlflow_server, tmp_path, monkeypatch) -> None:
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = config(tmp_path / "work")
    with pytest.raises(Exception, match=r"127\.0\.0\.1") as info:
        promote(cfg)
    assert "unreachable" in str(info.value) or "Connection" in str(info.value)


def test_pyfunc_rejects_wrong_dtype(mlflow_server, tmp_path) -> None:
    import mlflow

    cfg = config(tmp_path / "work")
    register.fn(cfg, training_run(cfg, "v1", knn=0.8))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    with pytest.raises(Exception, match="uint8"):
        model.predict(np.zeros((1, 8, 8, 3), dtype=np.float32))
