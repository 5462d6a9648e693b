"""The flow, for real: Prefect server, git, SSH keys, training, ART, approvals from separate processes.

One Prefect test server is started for the module; `airlock run` and `airlock approve` run as separate processes
against it, exactly as a deployment and its approvers would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from airlock.ledger import Ledger
from flows import demo
from airlock.gitutil import isolated_env
from tests.conftest import ROOT, commit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def work(tmp_path):
    """The demo's work directory, with cheaper model-gate settings (the gates' own tests use calibrated ones)."""
    paths = demo.build(tmp_path / "demo")
    text = paths["policy"].read_text()
    for old, new in (("stand_in_models = 5", "stand_in_models = 1\nimages = 100\nsteps = 60"),
                     ("ratio_no_production = 0.71", "ratio_no_production = 0.5"),
                     ("[advisory]               # membership inference, extraction effort, spectral signatures: "
                      "reported, never blocking\nenabled = true", "[advisory]\nenabled = false")):
        assert old in text, old
        text = text.replace(old, new)
    paths["policy"].write_text(text)
    return paths


def set_policy(paths, section: str, key: str, value) -> None:
    p = paths["policy"]
    text = p.read_text()
    text, n = re.subn(rf"(\[{re.escape(section)}\][^\[]*?){key} = [^\n]*", rf"\g<1>{key} = {value}", text, flags=re.S)
    assert n == 1, (section, key)
    p.write_text(text)


def start_run(paths, api: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])],
                            cwd=ROOT, env={**os.environ, "PREFECT_API_URL": api}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_to_end(paths, api: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])], cwd=ROOT,
                          env={**os.environ, "PREFECT_API_URL": api}, capture_output=True, text=True, timeout=timeout)


def approve(paths, api: str, run_id: str, key: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "approve", run_id, "--key", str(key),
                           "--config", str(paths["policy"]), "--wait", "60", *extra],
                          cwd=ROOT, env={**os.environ, "PREFECT_API_URL": api}, capture_output=True, text=True,
                          timeout=180)


def wait_for_pause(paths, proc: subprocess.Popen, timeout: float = 240, after: str | None = None) -> str:
    """The run id of the first approval request (of a run other than `after`)."""
    ledger = Ledger(paths["ledger"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.path.exists():
            for e in ledger.entries():
                if e["kind"] == "approval.requested" and e["run_id"] != after:
                    return e["run_id"]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before pausing: {proc.stdout.read()} {proc.stderr.read()}")
        time.sleep(0.5)
    raise AssertionError("run never paused for approval")


def kinds(paths) -> list[str]:
    return [e["kind"] for e in Ledger(paths["ledger"]).entries()]


def nothing_staged_or_promoted(paths) -> bool:
    return not (paths["registry"] / "staging").exists() and not (paths["registry"] / "production").exists()


def test_unsigned_commit_stops_the_run(work, prefect_api):
    (work["repo"] / "training" / "config.toml").write_text(
        (work["repo"] / "training" / "config.toml").read_text().replace("epochs = 30", "epochs = 31"))
    commit(work["repo"], "unsigned tweak", key=None)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "commit gate refused" in res.stdout and "is not signed" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert nothing_staged_or_promoted(work)
    assert kinds(work)[-1] == "run.failed"


def test_poisoned_data_stops_the_run(work, prefect_api):
    y_path = work["workdir"] / "data" / "train" / "train_y.npy"
    y = np.load(y_path)
    y[:50] = 7
    np.save(y_path, y)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "data:train gate refused" in res.stdout and "changed: train_y.npy" in res.stdout
    assert nothing_staged_or_promoted(work)


def test_golden_set_swapped_with_its_manifest_in_a_signed_commit_stops_the_run(work, prefect_api, tmp_path):
    """Swapped through the official path (ingested, manifest committed and signed): the policy's pin still refuses."""
    from airlock.ingest import ingest

    golden = work["workdir"] / "data" / "golden"
    swap = tmp_path / "swap"
    swap.mkdir()
    np.save(swap / "golden_y.npy", (np.load(golden / "golden_y.npy") + 1) % 10)   # every golden label wrong
    new = ingest("golden", swap, data_dir=golden, manifest_path=work["repo"] / "manifests" / "golden.json",
                 ledger=Ledger(work["ledger"]), source="s3://attacker/golden").root_digest
    commit(work["repo"], "refresh golden set", key=work["keys"] / "committer", email=demo.COMMITTER)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "data:golden gate refused" in res.stdout and f"has root digest {new}, not the pinned" in res.stdout
    assert nothing_staged_or_promoted(work)


def test_model_below_threshold_is_never_signed(work, prefect_api):
    set_policy(work, "evaluation", "min_test_accuracy", "0.999")
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "evaluation gate refused" in res.stdout and "test accuracy" in res.stdout
    assert nothing_staged_or_promoted(work)
    assert "model.signed" not in kinds(work)


def test_bad_approvals_are_refused_while_the_run_waits_then_it_times_out(work, prefect_api, keys):
    set_policy(work, "approval", "timeout_seconds", "35")
    proc = start_run(work, prefect_api)
    try:
        run_id = wait_for_pause(work, proc)
        keydir = work["keys"]

        # Someone not in the approvers file, claiming to be a new approver.
        stranger = approve(work, prefect_api, run_id, keys.key("carol"), "--as", "carol@airlock.demo")
        assert stranger.returncode == 1, stranger.stdout + stranger.stderr
        assert "approval refused by the flow" in stranger.stderr and "does not verify" in stranger.stderr

        # Someone not in the approvers file, impersonating bob.
        forged = approve(work, prefect_api, run_id, keys.key("carol"), "--as", "bob@airlock.demo")
        assert forged.returncode == 1 and "does not verify for bob@airlock.demo" in forged.stderr

        # A real approver: accepted.
        first = approve(work, prefect_api, run_id, keydir / "alice")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "accepted: alice@airlock.demo approved" in first.stdout

        # The same approver again does not make a quorum.
        again = approve(work, prefect_api, run_id, keydir / "alice")
        assert again.returncode == 1 and "already approved" in again.stderr

        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "1 of 2 required approvals" in out and "nothing was promoted" in out
    assert not (work["registry"] / "production").exists()
    k = kinds(work)
    assert k.count("approval.received") == 4 and "approval.timeout" in k and k[-1] == "run.failed"
    received = [e["data"]["verdict"] for e in Ledger(work["ledger"]).entries() if e["kind"] == "approval.received"]
    assert received == ["fail", "fail", "pass", "fail"]
    Ledger(work["ledger"]).verify()


def test_a_rejection_ends_the_run(work, prefect_api):
    proc = start_run(work, prefect_api)
    try:
        run_id = wait_for_pause(work, proc)
        res = approve(work, prefect_api, run_id, work["keys"] / "bob", "--reject", "--reason", "golden drift")
        assert res.returncode == 0, res.stdout + res.stderr       # the rejection itself was accepted
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "bob@airlock.demo rejected the model: golden drift" in out
    assert not (work["registry"] / "production").exists()


def test_demo_end_to_end_with_approvals_from_separate_processes(tmp_path):
    """`airlock demo` on Prefect's embedded default: promoted, verified, and the evidence holds."""
    res = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--workdir", str(tmp_path / "d"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["promoted"] and out["verified"]
    assert out["approver_exit_codes"] == {"alice": 0, "bob": 0}
    assert set(out["verdicts"].values()) == {"pass", "advisory"}
    assert {"commit", "data:train", "data:golden", "artifact", "evaluation", "robustness", "backdoor",
            "golden_regression", "approval"} <= {g for g, v in out["verdicts"].items() if v == "pass"}
    assert {"membership_inference", "extraction_effort", "spectral_signatures"} <= set(out["verdicts"])
    cfg = out["paths"]["policy"]
    verify = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--config", cfg], cwd=ROOT,
                            capture_output=True, text=True)
    assert verify.returncode == 0 and out["model_digest"] in verify.stdout
    ledger = subprocess.run([sys.executable, "-m", "flows.cli", "ledger", "verify", "--path", out["paths"]["ledger"]],
                            cwd=ROOT, capture_output=True, text=True)
    assert ledger.returncode == 0
    entries = list(Ledger(out["paths"]["ledger"]).entries())
    approvers = [e["data"]["evidence"]["approver"] for e in entries if e["kind"] == "approval.received"]
    assert approvers == ["alice@airlock.demo", "bob@airlock.demo"]
    assert [e["kind"] for e in entries][-2:] == ["registry.promote", "run.promoted"]


def test_after_a_promotion_every_commit_since_production_must_be_signed(work, prefect_api):
    """Promote once; then an unsigned commit slipped under a trusted signed HEAD is refused, named by the gate."""
    proc = start_run(work, prefect_api)
    try:
        run_id = wait_for_pause(work, proc)
        for who in ("alice", "bob"):
            res = approve(work, prefect_api, run_id, work["keys"] / who)
            assert res.returncode == 0, res.stdout + res.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    production_commit = next(e for e in Ledger(work["ledger"]).entries()
                             if e["kind"] == "gate.verdict" and e["data"]["gate"] == "commit")["data"]["evidence"]["commit"]

    cfg = work["repo"] / "training" / "config.toml"
    cfg.write_text(cfg.read_text() + "# sneaky\n")
    sneaky = commit(work["repo"], "sneaky unsigned tweak", key=None)
    cfg.write_text(cfg.read_text() + "# reviewed\n")
    commit(work["repo"], "reviewed change", key=work["keys"] / "committer", email=demo.COMMITTER)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"commit {sneaky[:12]} (1 of 2 since base {production_commit[:12]}" in res.stdout
    assert "is not signed" in res.stdout

    # A clean, signed retrain on top of production: the model gates now compare against production, and the
    # backdoor gate reuses production's trigger sizes cached in its signed evidence.
    subprocess.run(["git", "-C", str(work["repo"]), "reset", "-q", "--hard", production_commit], check=True,
                   env=isolated_env())
    cfg.write_text(cfg.read_text().replace("seed = 1234", "seed = 99"))
    commit(work["repo"], "retrain with another seed", key=work["keys"] / "committer", email=demo.COMMITTER)
    proc = start_run(work, prefect_api)
    try:
        res = approve(work, prefect_api, wait_for_pause(work, proc, after=run_id), work["keys"] / "alice", "--reject",
                      "--reason", "test over")
        assert res.returncode == 0, res.stdout + res.stderr
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    verdicts = {e["data"]["gate"]: e["data"] for e in Ledger(work["ledger"]).entries()
                if e["kind"] == "gate.verdict" and e["run_id"] != run_id}
    assert verdicts["backdoor"]["evidence"]["reference_kind"] == "production"
    assert verdicts["backdoor"]["verdict"] == "pass"
    assert "reference_robust_accuracy" in verdicts["robustness"]["metrics"]
    assert "p=" in verdicts["golden_regression"]["reason"]
