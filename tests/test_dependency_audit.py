"""Dependency audit: pip-audit over the environment this suite runs in (the project and its pinned
dependencies, installed by the README's test command), against PyPI's advisory data.

Fails on any known vulnerability not listed in ``ACCEPTED`` (each with its reason). pip-audit counts
a package it cannot look up as "not audited" and still reports "no known vulnerabilities", so this
test counts those itself, and skips, saying so in pytest's summary, when nothing could be looked up
(machines that reach only the package index, not its JSON API or OSV).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

#: Vulnerability IDs accepted for now, each with the reason it cannot be fixed by a pin.
ACCEPTED: dict[str, str] = {}


def test_no_installed_dependency_has_a_known_vulnerability() -> None:
    cmd = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "--skip-editable", "--format", "json"]
    for vuln in ACCEPTED:
        cmd += ["--ignore-vuln", vuln]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pip-audit did not report (exit {done.returncode}): {done.stderr[-2000:]}")
    deps = report["dependencies"]
    looked_up = [d for d in deps if "skip_reason" not in d]
    if not looked_up:
        reason = deps[0]["skip_reason"] if deps else "no dependencies listed"
        pytest.skip(f"NOT AUDITED: none of {len(deps)} packages could be looked up ({reason})")
    found = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions', [])) or 'no release'})"
        for d in looked_up
        for v in d.get("vulns", [])
    ]
    assert not found, "known vulnerabilities in installed dependencies:\n" + "\n".join(found)
