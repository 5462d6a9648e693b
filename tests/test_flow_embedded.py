"""The embedded default: no PREFECT_API_URL anywhere. `airlock run` starts Prefect's temporary server on its
PREFECT_HOME's database; each `airlock approve` started with the same PREFECT_HOME starts its own and resumes the run
the first process paused. The two roles' approvals promote.

The same run signs its model with a key inside a PKCS#11 token (SoftHSM2, signing.mode = "pkcs11"): the flow path of
that signing mode, end to end, with the registry verifying under the public key exported from the token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airlock.ledger import Ledger
from tests._flow import wait_for_pause
from tests.conftest import ROOT
from tests.test_signing_modes import PIN, token  # noqa: F401 - the SoftHSM2 token fixture

pytestmark = pytest.mark.slow


def test_embedded_default_pause_and_approvals_from_other_processes(work, tmp_path, token):  # noqa: F811
    text = work["policy"].read_text()
    old = 'private_key = "keys/model_signing.key"'
    assert old in text
    work["policy"].write_text(text.replace(old, f'mode = "pkcs11"\npkcs11_uri = "{token["uri"]}"'))
    (work["trust"] / "model_signing.pub").write_bytes(token["pub"].read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["AIRLOCK_PKCS11_PIN"] = PIN  # SOFTHSM2_CONF: set by the token fixture
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cli = [sys.executable, "-m", "flows.cli"]
    run = subprocess.Popen(
        [*cli, "run", "--config", str(work["policy"])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = wait_for_pause(work, run)
        for who in ("alice", "bob"):
            res = subprocess.run(
                [*cli, "approve", run_id, "--key", str(work["keys"] / who), "--config", str(work["policy"])]
                + ["--wait", "120", "--yes"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert res.returncode == 0 and "accepted:" in res.stdout, res.stdout + res.stderr
        out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out + err
    entries = [e for e in Ledger(work["ledger"]).entries() if e.get("run_id") == run_id]
    assert [e["data"]["verdict"] for e in entries if e["kind"] == "approval.received"] == ["pass", "pass"]
    assert entries[-1]["kind"] == "run.promoted"
    signed = next(e for e in entries if e["kind"] == "model.signed")["data"]
    assert signed["signer"] == {"mode": "pkcs11", "key": "pkcs11:token=airlock;object=model"}
    staged = next(e for e in entries if e["kind"] == "registry.stage")["data"]["digest"]
    assert json.loads((work["registry"] / "production" / "CURRENT").read_text())["digest"] == staged
