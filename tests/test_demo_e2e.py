"""`airlock demo`, end to end, from a separate process: its own Prefect server, two approvers, verified production,
with a real OCI registry (Debian's docker-registry on 127.0.0.1) as the model store. The directory store runs end
to end in the other flow tests and on the first-day page."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airlock.ledger import Ledger
from tests.conftest import ROOT
from tests.test_oci import oci_server  # noqa: F401 - the module-scoped docker-registry fixture

pytestmark = pytest.mark.slow


def test_demo_end_to_end_with_approvals_from_separate_processes(tmp_path, oci_server):  # noqa: F811
    """`airlock demo --registry oci+http://...` on its own local Prefect server: promoted, verified, and the evidence
    holds; production is in the OCI registry, and a machine with an empty working directory verifies it from there."""
    url = f"oci+http://{oci_server['base'].removeprefix('http://')}/demo/digits"
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(tmp_path / "d"), "--json", "--registry", url],
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
    # In the OCI registry: the production pointer names the model, and a fresh working directory verifies it.
    from registry import oci

    client = oci.Client(oci_server["base"])
    hexd = out["model_digest"].removeprefix("sha256:")
    assert client.get_manifest("demo/digits/production", f"m-{hexd}") is not None
    fresh = tmp_path / "other-machine.toml"
    fresh.write_text(
        open(cfg)
        .read()
        .replace('path = "registry"', f'path = "{tmp_path / "empty-cache"}"')
        .replace('path = "ledger.jsonl"', f'path = "{out["paths"]["ledger"]}"')
    )
    (tmp_path / "other-machine.toml").rename(tmp_path / "d" / "other-machine.toml")
    again = subprocess.run(
        [sys.executable, "-m", "flows.cli", "verify", "--config", str(tmp_path / "d" / "other-machine.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and out["model_digest"] in again.stdout, again.stderr
    ledger = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ledger", "verify", "--path", out["paths"]["ledger"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ledger.returncode == 0
    entries = list(Ledger(out["paths"]["ledger"]).entries())
    approvers = [e["data"]["evidence"]["approver"] for e in entries if e["kind"] == "approval.received"]
    assert sorted(approvers) == ["alice@airlock.demo", "bob@airlock.demo"]  # both at once: either may come first
    assert [e["kind"] for e in entries][-2:] == ["registry.promote", "run.promoted"]

    # `airlock serve` serves the demo's production model (fetched from the OCI registry, decrypted, verified)
    # behind the guard; its budget is the model's signed extraction effort.
    import socket

    import httpx
    import numpy as np

    from tests.guard_traffic import Serving

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Serving(cfg, port, tmp_path / "serve.log", timeout=120) as srv:
        base = srv.base
        described = httpx.get(f"{base}/v1/model").json()
        assert described["digest"] == out["model_digest"] and described["budget"] > 0
        key = (tmp_path / "d" / "keys" / "demo-client.apikey").read_text().strip()
        golden = np.load(tmp_path / "d" / "data" / "golden" / "golden_x.npy")[:5]
        labels = np.load(tmp_path / "d" / "data" / "golden" / "golden_y.npy")[:5]
        r = httpx.post(
            f"{base}/v1/predict", json={"inputs": golden.tolist()}, headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200 and set(r.json()) == {"labels", "model"}, r.text
        assert np.mean(np.asarray(r.json()["labels"]) == labels) >= 0.8
        assert httpx.post(f"{base}/v1/predict", json={"inputs": golden.tolist()}).status_code == 401
