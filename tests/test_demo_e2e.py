"""`airlock demo`, end to end, from a separate process: its own Prefect server, two approvers, verified production."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airlock.ledger import Ledger
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_end_to_end_with_approvals_from_separate_processes(tmp_path):
    """`airlock demo` on its own local Prefect server: promoted, verified, and the evidence holds."""
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(tmp_path / "d"), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["promoted"] and out["verified"]
    assert out["approver_exit_codes"] == {"alice": 0, "bob": 0}
    assert set(out["verdicts"].values()) == {"pass", "advisory"}
    assert {
        "commit",
        "data:train",
        "data:golden",
        "artifact",
        "evaluation",
        "robustness",
        "backdoor",
        "golden_regression",
        "approval",
    } <= {g for g, v in out["verdicts"].items() if v == "pass"}
    assert {"membership_inference", "extraction_effort", "spectral_signatures"} <= set(out["verdicts"])
    cfg = out["paths"]["policy"]
    verify = subprocess.run(
        [sys.executable, "-m", "flows.cli", "verify", "--config", cfg], cwd=ROOT, capture_output=True, text=True
    )
    assert verify.returncode == 0 and out["model_digest"] in verify.stdout
    ledger = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ledger", "verify", "--path", out["paths"]["ledger"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ledger.returncode == 0
    entries = list(Ledger(out["paths"]["ledger"]).entries())
    approvers = [e["data"]["evidence"]["approver"] for e in entries if e["kind"] == "approval.received"]
    assert approvers == ["alice@airlock.demo", "bob@airlock.demo"]
    assert [e["kind"] for e in entries][-2:] == ["registry.promote", "run.promoted"]
