"""The flow, for real, up to its refusals: Prefect server, git, SSH keys, training, ART, approvals from separate
processes.

One Prefect test server is started for the module (tests/_flow.py); `airlock run` and `airlock approve` run as
separate processes against it, exactly as a deployment and its approvers would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from airlock.ledger import Ledger
from flows import demo
from tests._flow import (
    approve,
    kinds,
    nothing_staged_or_promoted,
    run_to_end,
    set_policy,
    start_run,
    submit_twice_at_once,
    wait_for_pause,
)
from tests.conftest import assert_one_line_refusal, commit, opened_object, run_cli

pytestmark = pytest.mark.slow


def test_unsigned_commit_stops_the_run(work, prefect_api):
    (work["repo"] / "training" / "config.toml").write_text(
        (work["repo"] / "training" / "config.toml").read_text().replace("epochs = 30", "epochs = 31")
    )
    commit(work["repo"], "unsigned tweak", key=None)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "commit gate refused" in res.stdout and "is not signed" in res.stdout
    assert "[commit.unsigned]" in res.stdout  # the stable code, beside the reason
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
    assert "[data.mismatch]" in res.stdout
    verdicts = [e["data"] for e in Ledger(work["ledger"]).entries() if e["kind"] == "gate.verdict"]
    assert verdicts[-1]["code"] == "data.mismatch" and verdicts[0]["code"] == "commit.pass"
    assert nothing_staged_or_promoted(work)


def test_golden_set_swapped_with_its_manifest_in_a_signed_commit_stops_the_run(work, prefect_api, tmp_path):
    """Swapped through the official path (ingested, manifest committed and signed): the policy's pin still refuses."""
    from airlock.ingest import ingest

    golden = work["workdir"] / "data" / "golden"
    swap = tmp_path / "swap"
    swap.mkdir()
    np.save(swap / "golden_y.npy", (np.load(golden / "golden_y.npy") + 1) % 10)  # every golden label wrong
    new = ingest(
        "golden",
        swap,
        data_dir=golden,
        manifest_path=work["repo"] / "manifests" / "golden.json",
        ledger=Ledger(work["ledger"]),
        source="s3://attacker/golden",
    ).root_digest
    commit(work["repo"], "refresh golden set", key=work["keys"] / "committer", email=demo.COMMITTER)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "data:golden gate refused" in res.stdout and f"has root digest {new}, not the pinned" in res.stdout
    assert nothing_staged_or_promoted(work)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_a_failed_training_ends_the_evaluator_started_beside_it(work, prefect_api):
    """The model-gate evaluator starts beside the training (and, with nothing in production, trains the golden
    stand-in meanwhile). When the candidate's training fails, the run fails with the trainer's reason, and the
    evaluator and every sandbox it started are gone: here the stand-in's trainings would sleep a minute."""
    crash = (
        "import sys, time; time.sleep(12); "  # long enough for the evaluator to have started the stand-in
        "sys.exit('trainer crashed on purpose') if '--config' not in sys.argv else time.sleep(60)"
    )
    set_policy(work, "training", "command", json.dumps(["{python}", "-c", crash]))
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "trainer crashed on purpose" in res.stdout, res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert nothing_staged_or_promoted(work)
    assert kinds(work)[-1] == "run.failed"
    runs = work["workdir"] / "runs"
    (run_dir,) = list(runs.iterdir())
    assert (run_dir / "model-gates" / "stand-in" / "trained" / "seed-1234").is_dir()  # the stand-in was training ...
    assert not (run_dir / "model-gates" / "results.json").exists()  # ... and nothing was judged
    assert _processes_mentioning(str(run_dir)) == []


def test_model_below_threshold_is_never_signed(work, prefect_api):
    set_policy(work, "evaluation", "min_test_accuracy", "0.999")
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "evaluation gate refused" in res.stdout and "test accuracy" in res.stdout
    assert nothing_staged_or_promoted(work)
    assert "model.signed" not in kinds(work)


def test_bad_approvals_are_refused_while_the_run_waits_then_it_times_out(work, prefect_api, keys):
    set_policy(work, "approval", "timeout_seconds", "45")
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

        # Without a terminal to confirm on, nothing is signed unless --yes says so.
        unconfirmed = approve(work, prefect_api, run_id, keydir / "alice", yes=False)
        assert_one_line_refusal(unconfirmed, 2, "no terminal to confirm on", "pass --yes")

        # A real approver's approval (printed, as for the UI), written to the API twice at the same instant:
        # counted once.
        first = approve(work, prefect_api, run_id, keydir / "alice", "--print-only")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "(nothing in production)" in first.stderr and "commits in the range" in first.stderr
        submit_twice_at_once(work, prefect_api, run_id, json.loads(first.stdout))

        # `airlock pending`: the run, who approved in which role, and what the policy still needs.
        listed = run_cli("pending", "--config", str(work["policy"]), "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["pending"]
        assert row["run_id"] == run_id and row["refused_submissions"] in (2, 3)  # 3: the twin, judged already
        assert row["approved_by"] == [{"approver": "alice@airlock.demo", "roles": ["ml-lead"]}]
        assert row["still_needed"] == ["1 more security approver", "1 more distinct approver in all"]
        assert 0 < row["expires_in_seconds"] <= 45
        plain = run_cli("pending", "--config", str(work["policy"]))
        assert "alice@airlock.demo (ml-lead)" in plain.stdout and "1 more security approver" in plain.stdout

        # The same approver again does not make a quorum.
        again = approve(work, prefect_api, run_id, keydir / "alice")
        assert again.returncode == 1 and "already approved" in again.stderr

        # Bob's key is revoked while the run waits: the run's copy of the trust roots predates it, the decision
        # reads the revocation list in force now.
        (work["trust"] / "revoked_keys").write_text((keydir / "bob.pub").read_text())
        revoked = approve(work, prefect_api, run_id, keydir / "bob")
        assert revoked.returncode == 1, revoked.stdout + revoked.stderr
        assert "bob@airlock.demo is revoked" in revoked.stderr and "in force now" in revoked.stderr

        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "still needed 1 more security approver" in out and "nothing was promoted" in out
    assert not (work["registry"] / "production").exists()
    k = kinds(work)
    assert "approval.timeout" in k and k[-1] == "run.failed"
    received = [e["data"] for e in Ledger(work["ledger"]).entries() if e["kind"] == "approval.received"]
    # The twice-sent approval: counted once; its twin, where Prefect did not ABORT it, refused as a duplicate.
    twin = [r["code"] for r in received[3:-2]]
    assert [r["verdict"] for r in received[:3]] == ["fail", "fail", "pass"] and twin in ([], ["approval.duplicate"])
    assert [r["verdict"] for r in received[-2:]] == ["fail", "fail"]
    Ledger(work["ledger"]).verify()


def test_a_rejection_ends_the_run(work, prefect_api):
    """Run where the policy declares the pod to be the sandbox: recorded, signed and shown to the approver."""
    set_policy(work, "sandbox", "mode", '"environment"')
    proc = start_run(work, prefect_api)
    try:
        run_id = wait_for_pause(work, proc)
        res = approve(work, prefect_api, run_id, work["keys"] / "bob", "--reject", "--reason", "golden drift")
        assert res.returncode == 0, res.stdout + res.stderr  # the rejection itself was accepted
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "bob@airlock.demo rejected the model: golden drift" in out
    assert not (work["registry"] / "production").exists()
    # The staged model is marked rejected in the registry, with the signed rejection: it can never be promoted.
    (mark,) = (work["registry"] / "staging" / "rejected").glob("*.json")
    assert json.loads(mark.read_text())["reason"] == "golden drift"
    assert "registry.reject" in kinds(work)
    assert "WARNING: team code ran without Airlock's sandbox" in res.stdout
    staged = opened_object(work, next((work["registry"] / "staging").glob("[0-9a-f]*")))
    prov = json.loads((staged / "model" / "provenance.json").read_text())
    assert prov["sandbox"]["mode"] == "environment" and prov["sandbox"]["isolated"] is False
    bom = json.loads((staged / "model" / "aibom.cdx.json").read_text())
    props = {p["name"]: p["value"] for p in bom["metadata"]["component"]["properties"]}
    assert props["airlock:sandbox:mode"] == "environment" and props["airlock:sandbox:isolated"] == "false"


def test_the_run_refuses_when_the_sandbox_cannot_start(work, prefect_api):
    text = (
        work["policy"]
        .read_text()
        .replace('mode = "bubblewrap"', 'mode = "bubblewrap"\nbubblewrap = "/nonexistent/bwrap"')
    )
    work["policy"].write_text(text)
    res = run_to_end(work, prefect_api)
    assert res.returncode == 1, res.stdout + res.stderr
    assert (
        "bubblewrap (/nonexistent/bwrap) is not installed" in res.stdout and "apt-get install bubblewrap" in res.stdout
    )
    assert "Traceback" not in res.stdout + res.stderr
    assert nothing_staged_or_promoted(work)
    assert "commit" not in {
        e["data"].get("gate") for e in Ledger(work["ledger"]).entries() if e["kind"] == "gate.verdict"
    }
    assert kinds(work)[-1] == "run.failed"
