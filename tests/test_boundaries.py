"""sslcore is the library: it must not depend on the orchestration layer."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

FORBIDDEN = {"prefect", "mlflow", "ray"}


def test_sslcore_sources_import_no_orchestration_packages() -> None:
    offenders = []
    for path in sorted((REPO / "sslcore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_importing_all_of_sslcore_loads_no_orchestration_packages() -> None:
    code = (
        "import importlib, pkgutil, sys, sslcore\n"
        "for m in pkgutil.walk_packages(sslcore.__path__, 'sslcore.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted({{n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r}}})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"sslcore pulled in: {out.stdout.strip()}"


def test_the_ray_train_side_loads_no_prefect() -> None:
    """The driver's Ray adapter, the worker loop and the checkpoint helpers run inside Ray processes."""
    code = (
        "import sys, tasks.ray_train, tasks.train_worker, tasks.checkpoints\n"
        "print(','.join(sorted({n.split('.')[0] for n in sys.modules} & {'prefect'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the Ray side pulled in: {out.stdout.strip()}"
