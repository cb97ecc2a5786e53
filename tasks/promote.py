"""Promotion: move the ``champion`` alias to the ``candidate`` only when it beats the champion.

* Both versions are compared on the same evaluation data: when the champion was scored on other
  data (its ``sslpipe.eval_fingerprint`` differs), it is re-evaluated on the candidate's datasets.
* The decision and the numbers are recorded as tags on both versions and as a Prefect artifact.
* The old champion stays reachable as ``previous-champion``; :func:`rollback` swaps them back.
* Concurrency: a promotion holds a lock tag on the registered model, and re-reads the champion
  alias right before writing; if anything moved in between, it stops with :class:`PromotionConflict`.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from safetensors.torch import load_file

from sslcore.config import PipelineConfig
from sslcore.data.manifest import read_manifest
from sslcore.evaluation.protocols import evaluate_encoders
from sslcore.gates import Decision, PromotionConflict, PromotionError, decide
from sslcore.inference import EncoderSpec
from tasks.errors import retry_unless_user_error
from tasks.records import Record
from tasks.runtime import registry_errors, tracking_uri

LOCK_TAG = "sslpipe.promotion_lock"
EVAL_DATA_TAG = "sslpipe.eval_data"


class PromotionRecord(Record):
    model_name: str
    decision: str  # "promoted", "rejected", "unchanged" or "rolled back"
    reason: str
    candidate_version: str | None
    champion_before: str | None
    champion_after: str | None
    gates: list[dict[str, object]]


@dataclass
class _Versions:
    candidate: ModelVersion | None
    champion: ModelVersion | None


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # no such model or alias; connection failures carry other codes and propagate
        raise


class _Lock:
    """A lock tag on the registered model: set, then read back to confirm this promotion owns it."""

    def __init__(self, client: MlflowClient, name: str, timeout_s: float) -> None:
        self.client, self.name, self.timeout_s = client, name, timeout_s
        self.token = f"{uuid.uuid4().hex}:{time.time():.0f}"

    def __enter__(self) -> _Lock:
        held = self.client.get_registered_model(self.name).tags.get(LOCK_TAG)
        if held and time.time() - float(held.split(":")[1]) < self.timeout_s:
            raise PromotionConflict(
                f"another promotion of '{self.name}' holds the lock (since {time.ctime(float(held.split(':')[1]))}); "
                f"retry when it has finished"
            )
        try:
            self.client.set_registered_model_tag(self.name, LOCK_TAG, self.token)
        except RestException as exc:  # two writers of the same tag at once: the store refuses one
            raise PromotionConflict(
                f"another promotion of '{self.name}' took the lock at the same time; retry"
            ) from exc
        if self.client.get_registered_model(self.name).tags.get(LOCK_TAG) != self.token:
            raise PromotionConflict(f"another promotion of '{self.name}' took the lock at the same time; retry")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client.get_registered_model(self.name).tags.get(LOCK_TAG) == self.token:
            self.client.delete_registered_model_tag(self.name, LOCK_TAG)


def _metrics(client: MlflowClient, version: ModelVersion) -> dict[str, float]:
    if not version.run_id:
        return {}
    return dict(client.get_run(version.run_id).data.metrics)


def champion_metrics(config: PipelineConfig) -> tuple[str, dict[str, float]] | None:
    """The current champion's version and its logged metrics, if there is a champion."""
    uri = tracking_uri(config)
    with registry_errors(uri):
        client = MlflowClient(uri)
        champion = _alias(client, config.mlflow.model_name, config.promotion.champion_alias)
        return None if champion is None else (str(champion.version), _metrics(client, champion))


def _reevaluate(
    client: MlflowClient, config: PipelineConfig, version: ModelVersion, data: list[list[str]]
) -> dict[str, float]:
    """Score ``version`` on the datasets ``[[name, path], ...]`` with the current evaluation settings."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = client.download_artifacts(version.run_id, "timm/backbone.safetensors", tmp)
        spec = EncoderSpec.model_validate_json(
            Path(client.download_artifacts(version.run_id, "timm/encoder.json", tmp)).read_text()
        )
        state = load_file(weights)
    cfg = config.model_copy(update={"model": spec.model, "eval": config.eval.model_copy(update={"plots": False})})
    datasets = [(name, read_manifest(path, config.storage), path) for name, path in data]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return evaluate_encoders(cfg, datasets, state, device=device).metrics


def _record(
    client: MlflowClient, name: str, version: ModelVersion, decision: str, other: str | None, gates: str
) -> None:
    client.set_model_version_tag(name, version.version, "sslpipe.promotion_decision", decision)
    client.set_model_version_tag(
        name, version.version, "sslpipe.promotion_compared_with", other or "random-init baseline"
    )
    client.set_model_version_tag(name, version.version, "sslpipe.promotion_gates", gates[:4900])
    client.set_model_version_tag(
        name, version.version, "sslpipe.promotion_time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )


def promote(config: PipelineConfig) -> PromotionRecord:
    """Compare the candidate with the champion on the configured gates; move aliases if it wins."""
    uri = tracking_uri(config)
    with registry_errors(uri):
        return _promote(config, uri)


def _promote(config: PipelineConfig, uri: str) -> PromotionRecord:
    client = MlflowClient(uri)
    name, p = config.mlflow.model_name, config.promotion
    mlflow.set_tracking_uri(uri)
    candidate = _alias(client, name, config.mlflow.alias)
    if candidate is None:
        raise PromotionError(f"no version of '{name}' has the alias '{config.mlflow.alias}': run the pipeline first")
    with _Lock(client, name, p.lock_timeout_s):
        champion = _alias(client, name, p.champion_alias)
        if champion is not None and champion.version == candidate.version:
            return PromotionRecord(
                model_name=name,
                decision="unchanged",
                reason="the candidate is already the champion",
                candidate_version=candidate.version,
                champion_before=champion.version,
                champion_after=champion.version,
                gates=[],
            )
        cand_metrics = _metrics(client, candidate)
        datasets = [d for d in candidate.tags.get("sslpipe.eval_datasets", "").split(",") if d]
        primary = p.primary or candidate.tags.get("sslpipe.headline_metric", "")
        if champion is None:
            decision = decide(cand_metrics, {}, p, primary=primary, datasets=datasets, first=True)
        else:
            same_data = champion.tags.get("sslpipe.eval_fingerprint") == candidate.tags.get("sslpipe.eval_fingerprint")
            if same_data:
                champ_metrics = _metrics(client, champion)
            else:
                data = json.loads(candidate.tags.get(EVAL_DATA_TAG, "[]"))
                if not data:
                    raise PromotionError(
                        f"version {candidate.version} does not record its evaluation data ({EVAL_DATA_TAG})"
                    )
                champ_metrics = _reevaluate(client, config, champion, data)
                fp = candidate.tags.get("sslpipe.eval_fingerprint", "")
                client.set_model_version_tag(name, champion.version, f"sslpipe.reevaluated.{fp[:12]}",
                                             json.dumps({k: round(v, 6) for k, v in champ_metrics.items()
                                                         if k == primary or "/ssl/" in k})[:4900])  # fmt: skip
            decision = decide(cand_metrics, champ_metrics, p, primary=primary, datasets=datasets)
        gates = json.dumps(decision.as_dict(), sort_keys=True)
        verdict = "promoted" if decision.promote else "rejected"
        _record(client, name, candidate, verdict, champion.version if champion else None, gates)
        if champion is not None:
            _record(client, name, champion, f"challenged by {candidate.version}: {verdict}", candidate.version, gates)
        if decision.promote:
            now = _alias(client, name, p.champion_alias)  # re-read right before writing
            if (now.version if now else None) != (champion.version if champion else None):
                raise PromotionConflict(
                    f"'{p.champion_alias}' moved to version {now.version if now else None} during this promotion; "
                    f"nothing was changed, run the promotion again"
                )
            if champion is not None:
                client.set_registered_model_alias(name, p.previous_alias, champion.version)
            client.set_registered_model_alias(name, p.champion_alias, candidate.version)
    return PromotionRecord(
        model_name=name,
        decision=verdict,
        reason=decision.reason,
        candidate_version=candidate.version,
        champion_before=champion.version if champion else None,
        champion_after=candidate.version if decision.promote else (champion.version if champion else None),
        gates=[dict(g) for g in decision.as_dict()["gates"]],  # type: ignore[union-attr]
    )


def rollback(config: PipelineConfig) -> PromotionRecord:
    """Make ``previous-champion`` the champion again (and the current champion the previous one)."""
    with registry_errors(tracking_uri(config)):
        return _rollback(config)


def _rollback(config: PipelineConfig) -> PromotionRecord:
    client = MlflowClient(tracking_uri(config))
    name, p = config.mlflow.model_name, config.promotion
    with _Lock(client, name, p.lock_timeout_s):
        previous = _alias(client, name, p.previous_alias)
        current = _alias(client, name, p.champion_alias)
        if previous is None:
            raise PromotionError(f"'{name}' has no '{p.previous_alias}' version to roll back to")
        client.set_registered_model_alias(name, p.champion_alias, previous.version)
        if current is not None:
            client.set_registered_model_alias(name, p.previous_alias, current.version)
            client.set_model_version_tag(name, current.version, "sslpipe.promotion_decision", "rolled back")
        client.set_model_version_tag(name, previous.version, "sslpipe.promotion_decision", "restored by rollback")
    return PromotionRecord(
        model_name=name, decision="rolled back", reason=f"{p.champion_alias} restored to version {previous.version}",
        candidate_version=None, champion_before=current.version if current else None,
        champion_after=previous.version, gates=[],
    )  # fmt: skip


def decision_markdown(record: PromotionRecord) -> str:
    rows = "".join(
        f"| {g['gate']} | `{g['metric']}` | {_f(g['candidate'])} | {_f(g['reference'])} | "
        f"{'pass' if g['passed'] else 'FAIL'} |\n"
        for g in record.gates
    )
    table = "| gate | metric | candidate | reference | result |\n|---|---|---:|---:|---|\n" + rows if rows else ""
    return (
        f"### Promotion of `{record.model_name}`: {record.decision}\n{record.reason}\n\n"
        f"champion: {record.champion_before} -> {record.champion_after}\n\n{table}"
    )


def _f(value: object) -> str:
    return "-" if value is None else f"{float(value):.4f}"  # type: ignore[arg-type]


@task(
    name="promote",
    retries=3,
    retry_delay_seconds=[10, 20, 40],  # the defaults of flow.retry_delay_s; promote_flow passes the config's
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
    tags=["sslpipe", "promote", "mlflow"],
)
def promote_task(config: PipelineConfig, roll_back: bool = False) -> PromotionRecord:
    """Promote the candidate if it beats the champion (or roll back to the previous champion)."""
    record = rollback(config) if roll_back else promote(config)
    create_markdown_artifact(key="promotion", markdown=decision_markdown(record), description="Promotion decision")
    return record


__all__ = ["Decision", "PromotionConflict", "PromotionError", "PromotionRecord", "promote", "promote_task", "rollback"]
