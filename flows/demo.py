"""``airlock demo``: the whole gated retrain, self-contained, on Prefect's embedded default.

Creates in the work directory (layout in the README):

    airlock.toml           the policy (outside the repository it judges)
    trust/                 allowed_signers (committers), approvers, model_signing.pub
    keys/                  SSH keys of the committer and the two approvers, the model-signing EC key
    data/train, data/golden  scikit-learn's digits as ingested
    repo/                  the training repository: training/ (the example trainer) and manifests/, signed commit
    registry/, ledger.jsonl, runs/, prefect/

then runs the flow and approves it with the two demo approvers from separate processes, through the same
``airlock approve`` path real approvers use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from airlock import manifest, modelsign
from airlock.datasets import write_digits
from airlock.errors import AirlockError
from airlock.gitutil import isolated_env
from airlock.ledger import Ledger

COMMITTER = "dev@airlock.demo"
APPROVERS = ("alice@airlock.demo", "bob@airlock.demo")
TRAINER_FILES = ("__init__.py", "model.py", "train.py", "config.toml")


class DemoError(AirlockError):
    exit_code = 1


def _ssh_key(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    keytype, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{keytype} {blob}"


def signed_commit(repo: Path, key: Path, email: str, message: str) -> None:
    cfg = ["-c", f"user.name={email.split('@')[0]}", "-c", f"user.email={email}", "-c", "gpg.format=ssh",
           "-c", f"user.signingkey={key}", "-c", "gpg.ssh.program=ssh-keygen"]
    env = isolated_env()
    subprocess.run(["git", *cfg, "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", *cfg, "-C", str(repo), "commit", "-q", "-S", "-m", message], check=True, env=env)


def build(workdir: Path) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise DemoError(f"{workdir} is not empty", "pass --workdir with a new or empty directory")
    keys, trust, repo = workdir / "keys", workdir / "trust", workdir / "repo"
    for d in (keys, trust, repo / "training", repo / "manifests"):
        d.mkdir(parents=True)

    committer = _ssh_key(keys / "committer", COMMITTER)
    (trust / "allowed_signers").write_text(f'{COMMITTER} namespaces="git" {committer}\n')
    lines = []
    for name in APPROVERS:
        pub = _ssh_key(keys / name.split("@")[0], name)
        lines.append(f'{name} namespaces="airlock-approval" {pub}\n')
    (trust / "approvers").write_text("".join(lines))
    modelsign.generate_keypair(keys / "model_signing.key", trust / "model_signing.pub")

    write_digits(workdir / "data" / "train", workdir / "data" / "golden")
    import training

    for name in TRAINER_FILES:
        shutil.copy2(Path(training.__file__).parent / name, repo / "training" / name)
    for ds in ("train", "golden"):
        manifest.write(repo / "manifests" / f"{ds}.json", manifest.build(workdir / "data" / ds, ds))
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "README.md").write_text("# Demo training repository\n\nThe example trainer and the committed data manifests.\n")
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=isolated_env())
    signed_commit(repo, keys / "committer", COMMITTER, "Example digits trainer and data manifests")

    (workdir / "airlock.toml").write_text(POLICY)
    return {"workdir": workdir, "policy": workdir / "airlock.toml", "repo": repo, "keys": keys, "trust": trust,
            "registry": workdir / "registry", "ledger": workdir / "ledger.jsonl", "prefect_home": workdir / "prefect"}


POLICY = """\
# Airlock policy for the demo. Paths are relative to this file; manifests are relative to the repository.
[repo]
path = "repo"

[trust]            # trust roots: outside the repository they judge
allowed_signers = "trust/allowed_signers"
approvers = "trust/approvers"
model_signing_public_key = "trust/model_signing.pub"

[signing]
private_key = "keys/model_signing.key"

[data.train]
dir = "data/train"
manifest = "manifests/train.json"

[data.golden]
dir = "data/golden"
manifest = "manifests/golden.json"

[training]
command = ["{python}", "-m", "training.train"]
timeout_seconds = 600
threads = 1

[evaluation]
min_test_accuracy = 0.90
min_golden_accuracy = 0.90
epsilon = 0.1
min_robust_accuracy = 0.30
pgd_steps = 10
robust_samples = 360

[approval]
quorum = 2
timeout_seconds = 900
poll_seconds = 1
forbid_self_approval = true

[registry]
path = "registry"

[ledger]
path = "ledger.jsonl"

[run]
workdir = "runs"
"""


def approver_process(paths: dict[str, Path], run_id: str, who: str, log, extra: list[str] = ()) -> int:
    """An approver in a separate process, through the real CLI path."""
    cmd = [sys.executable, "-m", "flows.cli", "approve", run_id, "--key", str(paths["keys"] / who),
           "--config", str(paths["policy"]), *extra]
    env = dict(os.environ, PREFECT_HOME=str(paths["prefect_home"]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            print(f"           {who:5} | {line.rstrip()}", file=log, flush=True)
    return proc.wait(timeout=600)


def wait_for_request(ledger: Ledger, timeout: float, stop: threading.Event) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if ledger.path.exists():
            for e in ledger.entries():
                if e["kind"] == "approval.requested":
                    return e["run_id"]
                if e["kind"] == "run.failed":
                    return None
        time.sleep(0.5)
    return None


def main(args) -> int:
    from flows.cli import Printer, _prefect_env

    log = sys.stderr if args.json else sys.stdout
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="airlock-demo-"))
    print(f"airlock demo in {workdir}", file=log, flush=True)
    t0 = time.monotonic()
    paths = build(workdir.resolve())
    print(f"  {'READY':8} {'setup':14} signed repo, keys for 1 committer + 2 approvers, digits data, policy "
          f"({time.monotonic() - t0:.1f} s)", file=log, flush=True)

    _prefect_env(getattr(args, "verbose", False), home=paths["prefect_home"])
    from flows import _report
    from flows.retrain import retrain

    printer = Printer(log)
    _report.LISTENERS.append(printer)
    stop = threading.Event()
    codes: dict[str, int] = {}

    def approvers() -> None:
        run_id = wait_for_request(Ledger(paths["ledger"]), 1800, stop)
        if run_id is None:
            return
        for who in ("alice", "bob"):
            codes[who] = approver_process(paths, run_id, who, log)

    thread = threading.Thread(target=approvers, name="demo-approvers", daemon=True)
    thread.start()
    try:
        state = retrain(str(paths["policy"]), return_state=True)
    finally:
        stop.set()
        thread.join(timeout=60)
    ok = state.is_completed()

    verified = False
    if ok:
        from airlock import policy
        from registry import Registry

        pol = policy.load(paths["policy"])
        reg = Registry(pol.registry.path, Ledger(pol.ledger.path), pol.trust.model_signing_public_key, pol.trust.approvers)
        model, verdict = reg.verify_stage("production", pol.approval.quorum)
        verified = True
        print(f"  {'VERIFIED':8} {'production':14} {model.digest}: signature, digest, {verdict.reason}", file=log, flush=True)
    promoted = printer.events.get("promoted", {})
    started = printer.events.get("start", {})
    result = {
        "run_id": started.get("run_id"),
        "model_digest": promoted.get("model_digest") or printer.events.get("staged", {}).get("digest"),
        "promoted": ok,
        "verified": verified,
        "verdicts": printer.verdicts,
        "approver_exit_codes": codes,
        "seconds": round(time.monotonic() - t0, 1),
        "paths": {k: str(v) for k, v in paths.items()} | {"run_dir": started.get("run_dir")},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"\n{'promoted and verified' if ok else 'NOT promoted'} in {result['seconds']} s. Try:\n"
              f"  airlock verify --config {paths['policy']}\n"
              f"  airlock ledger verify --path {paths['ledger']}", file=log)
    return 0 if ok and verified else 1
