"""``airlock demo``: the whole gated retrain, self-contained, on a local Prefect server of its own.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from airlock import modelsign
from airlock.datasets import write_digits
from airlock.errors import DemoError, LedgerError
from airlock.gitutil import isolated_env
from airlock.ingest import ingest
from airlock.ledger import Ledger
from airlock.ledger import generate_key as generate_ledger_key
from flows import _server
from registry import atrest
from serve.keys import add_client

COMMITTER = "dev@airlock.demo"
APPROVERS = ("alice@airlock.demo", "bob@airlock.demo")
ROLES = ("ml-lead", "security")  # the default approval policy: one of each, two different people
TRAINER_FILES = ("__init__.py", "model.py", "train.py", "config.toml", "requirements.lock")


def _ssh_key(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    keytype, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return f"{keytype} {blob}"


def signed_commit(repo: Path, key: Path, email: str, message: str) -> None:
    cfg = [
        "-c",
        f"user.name={email.split('@')[0]}",
        "-c",
        f"user.email={email}",
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={key}",
        "-c",
        "gpg.ssh.program=ssh-keygen",
    ]
    env = isolated_env()
    subprocess.run(["git", *cfg, "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", *cfg, "-C", str(repo), "commit", "-q", "-S", "-m", message], check=True, env=env)


def _require_empty(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise DemoError(f"{workdir} is not empty", "pass --workdir with a new or empty directory")


def build(workdir: Path, *, checked: bool = False, registry_url: str | None = None) -> dict[str, Path]:
    """The demo's work directory (``checked``: the caller has made sure it was empty, then started Prefect in it)."""
    if not checked:
        _require_empty(workdir)
    keys, trust, repo = workdir / "keys", workdir / "trust", workdir / "repo"
    for d in (keys, trust, repo / "training", repo / "manifests"):
        d.mkdir(parents=True)

    committer = _ssh_key(keys / "committer", COMMITTER)
    (trust / "allowed_signers").write_text(f'{COMMITTER} namespaces="git" {committer}\n')
    lines = []
    for name, role in zip(APPROVERS, ROLES):
        pub = _ssh_key(keys / name.split("@")[0], name)
        lines.append(f'{name} namespaces="airlock-approval" {pub} roles={role}\n')
    (trust / "approvers").write_text("".join(lines))
    modelsign.generate_keypair(keys / "model_signing.key", trust / "model_signing.pub")
    generate_ledger_key(keys / "ledger.key", trust / "ledger.pub")  # every ledger entry is signed with it
    atrest.generate_key(keys / "registry.key")  # the stored models are encrypted with it (registry/atrest.py)
    # An API key for `airlock serve` (only its sha256 is in serve-keys.json).
    (keys / "demo-client.apikey").write_text(add_client(workdir / "serve-keys.json", "demo-client") + "\n")
    # Where signed checkpoints of the ledger go after every run (a real deployment pushes this ref elsewhere).
    subprocess.run(["git", "init", "-q", str(workdir / "checkpoints")], check=True, env=isolated_env())

    import training

    for name in TRAINER_FILES:
        shutil.copy2(Path(training.__file__).parent / name, repo / "training" / name)
    # The data arrives as one batch per dataset, ingested like any batch: copied, hashed, manifest version 1 (+ its
    # history), a data.ingest entry in the ledger.
    import sklearn

    incoming = workdir / "incoming"
    write_digits(incoming / "train", incoming / "golden")
    roots = {}
    for ds, note in (
        (
            "train",
            "train/test splits of the 1,797 digits minus the golden set, stratified, seed 0, pixels scaled to [0, 1]",
        ),
        ("golden", "300 digits held out before the train/test split, stratified, seed 0, known-clean"),
    ):
        roots[ds] = ingest(
            ds,
            incoming / ds,
            data_dir=workdir / "data" / ds,
            manifest_path=repo / "manifests" / f"{ds}.json",
            ledger=Ledger(workdir / "ledger.jsonl", keys / "ledger.key", trust / "ledger.pub"),
            note=note,
            source=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__}, bundled)",
        ).root_digest
    # One golden digit as a request body for `airlock serve` (the command the demo prints at the end).
    import numpy as np

    one = np.load(workdir / "data" / "golden" / "golden_x.npy")[:1]
    (workdir / "digit.json").write_text(json.dumps({"inputs": one.round(4).tolist()}) + "\n")
    shutil.rmtree(incoming)
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "README.md").write_text(
        "# Demo training repository\n\nThe example trainer and the committed data manifests.\n"
    )
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=isolated_env())
    signed_commit(repo, keys / "committer", COMMITTER, "Example digits trainer and data manifests")

    # Written last: it pins the golden set's root digest, known only once the golden set is ingested.
    policy = POLICY.replace("@GOLDEN_ROOT_DIGEST@", roots["golden"])
    if registry_url:  # an OCI registry as the store; registry/ stays this machine's working directory for it
        policy = policy.replace(
            '[registry]\npath = "registry"\n', f'[registry]\npath = "registry"\nurl = "{registry_url}"\n'
        )
    (workdir / "airlock.toml").write_text(policy)
    return {
        "workdir": workdir,
        "policy": workdir / "airlock.toml",
        "repo": repo,
        "keys": keys,
        "trust": trust,
        "registry": workdir / "registry",
        "ledger": workdir / "ledger.jsonl",
        "prefect_home": workdir / "prefect",
    }


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

[data.train.validate]   # content rules checked by the data gate (docs/policy.md)
x_shape = [1, 8, 8]
x_dtype = "float32"
x_min = 0.0
x_max = 1.0
labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
max_label_shift = 0.10  # total-variation distance of each split's labels from the previous version

[data.golden]
dir = "data/golden"
manifest = "manifests/golden.json"
pinned_root_digest = "@GOLDEN_ROOT_DIGEST@"   # a golden set swapped with its manifest is refused

[data.golden.validate]
x_shape = [1, 8, 8]
x_dtype = "float32"
x_min = 0.0
x_max = 1.0
labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

[training]
command = ["{python}", "-m", "training.train"]
timeout_seconds = 600
threads = 1
lock = "training/requirements.lock"   # the trainer's packages, each wheel's hash checked (gates/environment.py)

[sandbox]                # team code (trainer, model code) runs in bubblewrap: no keys, trust files or network
mode = "bubblewrap"

[evaluation]
min_test_accuracy = 0.90
min_golden_accuracy = 0.90

[robustness]             # ART PGD sweep + APGD-CE/DLR; decided on the Wilson 95% lower bound
epsilons = [0.025, 0.05, 0.1, 0.15, 0.2, 0.3]
gating_epsilon = 0.05
min_robust_accuracy = 0.70
samples = 360

[backdoor]               # Neural Cleanse trigger sizes against production (or a golden-set stand-in)
ratio = 0.75
ratio_no_production = 0.70
stand_in_models = 5

[golden_regression]      # McNemar, candidate vs production on the golden set
alpha = 0.01

[advisory]               # membership inference, extraction effort, spectral signatures: reported, never blocking
enabled = true

[approval]              # one ml-lead and one security approver (roles in trust/approvers), two different people
require = { all_of = [{ role = "ml-lead" }, { role = "security" }] }
quorum = 2
ttl_seconds = 86400     # an approval is valid for a day after it was signed
timeout_seconds = 900
poll_seconds = 0.25     # how often the paused run looks for a submission (an API read each time)
forbid_self_approval = true
max_attempts = 20       # signed submissions; junk written to the Prefect API does not count
mode = "pause"          # "suspend" on a deployment: the process exits at each pause, an approval restarts it

[registry]
path = "registry"
encryption_key = "keys/registry.key"   # stored model files sealed (AES-256-GCM); the sandbox never sees this key

[ledger]
path = "ledger.jsonl"
public_key = "trust/ledger.pub"   # every entry signed: a line appended by anyone without keys/ledger.key is refused
key = "keys/ledger.key"
checkpoints = "checkpoints"        # signed checkpoints of the ledger's head, after every run (a git ref)

[run]
workdir = "runs"

[serve]                 # airlock serve: production behind the runtime guard (docs/serving.md)
api_keys = "serve-keys.json"         # sha256 of each API key; keys/demo-client.apikey holds the demo client's key
store = "memory"                   # one worker; redis://HOST:PORT for several
alerts = "alerts.jsonl"            # Falco-format alerts
"""


def approver_process(paths: dict[str, Path], run_id: str, who: str, log, extra: Sequence[str] = ()) -> int:
    """An approver in a separate process, through the real CLI path, on the demo's Prefect server."""
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "approve",
        run_id,
        "--key",
        str(paths["keys"] / who),
        "--config",
        str(paths["policy"]),
        "--yes",  # the demo's approvers have seen the verdicts printed above
        *extra,
    ]
    env = dict(os.environ, PREFECT_HOME=str(paths["prefect_home"]))  # PREFECT_API_URL: main() set it
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    # Each approver's lines together (two approve at once): what they saw, then what they submitted.
    seen = [f"           {who:5} | {line.rstrip()}\n" for line in proc.stdout if line.strip()]
    with _PRINTING:
        print("".join(seen), end="", file=log, flush=True)
    return proc.wait(timeout=600)


_PRINTING = threading.Lock()


def wait_for_request(ledger: Ledger, timeout: float, stop: threading.Event) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            for e in ledger.entries():
                if e["kind"] == "approval.requested":
                    return e["run_id"]
                if e["kind"] == "run.failed":
                    return None
        except LedgerError:
            pass  # read while the flow was appending a line: read again at the next poll
        time.sleep(0.5)
    return None


def main(args) -> int:
    log = sys.stderr if args.json else sys.stdout
    if getattr(args, "registry", None):  # a bad URL is a usage error, before anything is built or started
        from airlock.errors import RegistryError, UsageError
        from registry import oci

        try:
            oci.Location.parse(args.registry)
        except RegistryError as e:
            raise UsageError(f"--registry: {e.what}", e.hint) from None
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="airlock-demo-"))
    print(f"airlock demo in {workdir}", file=log, flush=True)
    t0 = time.monotonic()
    workdir = workdir.resolve()
    _require_empty(workdir)
    # One Prefect server for the flow and both approvers, starting while the demo builds its keys, repo and data.
    server = _server.Server(workdir / "prefect").start()
    try:
        return _run(args, log, workdir, server, t0)
    finally:
        _drain_prefect()
        server.stop()


def _drain_prefect() -> None:
    """Send Prefect's queued logs and events while the server still runs: drained at exit instead, after the demo
    stopped its server, they retry against a closed port for over a minute before the process may end."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=10)
        except Exception:  # noqa: BLE001 - best effort: the demo's outcome is already printed
            pass


def _run(args, log, workdir: Path, server: _server.Server, t0: float) -> int:
    from flows._console import Printer, _prefect_env

    paths = build(workdir, checked=True, registry_url=getattr(args, "registry", None))
    print(
        f"  {'READY':8} {'setup':20} signed repo, keys for 1 committer + 2 approvers, digits data, policy "
        f"({time.monotonic() - t0:.1f} s)",
        file=log,
        flush=True,
    )
    # Prefect reads its settings at import: the server's address first, then the flow's imports while it starts.
    os.environ["PREFECT_API_URL"] = server.url
    _prefect_env(getattr(args, "verbose", False), home=paths["prefect_home"])
    from prefect.states import State

    from flows import _report
    from flows.retrain import retrain

    server.wait()
    print(
        f"  {'READY':8} {'prefect':20} {server.url} ({time.monotonic() - t0:.1f} s"
        f"{'' if server.seeded else ', new database migrated'})",
        file=log,
        flush=True,
    )

    printer = Printer(log)
    _report.LISTENERS.append(printer)
    stop = threading.Event()
    codes: dict[str, int] = {}

    def approvers() -> None:
        try:
            run_id = wait_for_request(Ledger(paths["ledger"], public_key=paths["trust"] / "ledger.pub"), 1800, stop)
            if run_id is None:
                return
            # Both at once, as two people would: the second's submission waits while the first is judged
            # (`airlock approve` resubmits at the next pause), and neither waits for the other to read the report.
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {who: pool.submit(approver_process, paths, run_id, who, log) for who in ("alice", "bob")}
                # Meanwhile, the import the last step (loading production's weights) would wait seconds for.
                import safetensors.torch  # noqa: F401

                codes.update({who: f.result() for who, f in futures.items()})
        except Exception as e:  # noqa: BLE001 - said, not swallowed: the flow then waits out its approval timeout
            print(f"  {'ERROR':8} {'demo approvers':20} {type(e).__name__}: {e}", file=log, flush=True)

    thread = threading.Thread(target=approvers, name="demo-approvers", daemon=True)
    thread.start()
    try:
        state = cast(State, retrain(str(paths["policy"]), return_state=True))
    finally:
        stop.set()
        thread.join(timeout=60)
    ok = state.is_completed()

    verified = False
    if ok:
        import airlock

        # As a model server would obtain it: verified loading (registry/loading.py), weights parsed from the bytes
        # that verified.
        model = airlock.load("production", config=paths["policy"])
        verified = bool(model.tensors())
        print(
            f"  {'VERIFIED':8} {'production':20} {model.digest}: signature, digest, approvals by "
            f"{', '.join(model.approvers)}, gate evidence, AIBOM; {len(model.tensors())} tensors loaded",
            file=log,
            flush=True,
        )
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
        print(
            f"\n{'promoted and verified' if ok else 'NOT promoted'} in {result['seconds']} s. Try:\n"
            f"  airlock verify --config {paths['policy']}\n"
            f"  airlock ledger verify --config {paths['policy']}\n"
            f'  airlock serve --config {paths["policy"]}   # then: curl -H "Authorization: Bearer $(cat '
            f'{paths["keys"]}/demo-client.apikey)" -d @{paths["workdir"]}/digit.json http://127.0.0.1:8080/v1/predict',
            file=log,
        )
    return 0 if ok and verified else 1
