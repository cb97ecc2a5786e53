"""Running ingestion as its own process, so tests can kill it for real."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sslcore.config import IngestConfig, StorageConfig
from sslcore.storage import filesystem

DRIVER = """
import json, sys
from sslcore.config import IngestConfig, StorageConfig
from sslcore.data.ingest import ingest
args = json.loads(sys.argv[1])
cfg = IngestConfig.model_validate(args["cfg"])
storage = StorageConfig.model_validate(args["storage"]) if args["storage"] else None
if __name__ == "__main__":
    result = ingest(cfg, args["root"], storage=storage)
    print(json.dumps({"folder": result.folder, "resumed": result.resumed, "reused": result.reused}))
"""


def start_ingest(cfg: IngestConfig, root: str, storage: StorageConfig | None = None) -> subprocess.Popen[str]:
    payload = json.dumps(
        {
            "cfg": cfg.model_dump(mode="json"),
            "root": root,
            "storage": storage.model_dump(mode="json") if storage else None,
        }
    )
    return subprocess.Popen(  # its own session: a kill can take its decode pool with it (os.killpg)
        [sys.executable, "-c", DRIVER, payload],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_ingest(cfg: IngestConfig, root: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    proc = start_ingest(cfg, root, storage)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def wait_for(predicate, timeout: float = 120, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def tree_digest(url: str, storage: StorageConfig | None = None) -> dict[str, str]:
    """sha256 of every file under ``url`` (relative names), local or s3://."""
    fs, root = filesystem(url, storage)
    root = root.rstrip("/")
    return {path[len(root) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest() for path in sorted(fs.find(root))}


def journal_entries(folder: Path) -> int:
    journal = folder / "_journal"
    return len(list(journal.glob("*.json"))) if journal.exists() else 0
