"""``airlock init DIR``: what a forking team needs outside its training repository, ready for a first run.

Writes DIR/airlock.toml (the policy), DIR/trust/ (allowed signers, approvers with roles, the model-signing public
key, an empty revocation list) and DIR/keys/model_signing.key (0600, in a 0700 directory), then prints the commands
that remain: the data manifests, one signed commit, `airlock run`. Nothing is written inside the repository: the
policy and the trust files are trust roots, and a commit must never vouch for itself (airlock/trust.py).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from airlock.errors import UsageError

_EMAIL = re.compile(r"^[^\s@=]+@[^\s@=]+$")
_ROLE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

POLICY = """\
# Airlock policy, written by `airlock init`. Paths are relative to this file; manifests to the repository.
# Every key is documented in docs/policy.md. This file is a trust root: keep it outside the repository.
[repo]
path = "{repo}"

[trust]            # who may sign commits and approve models, and the key models are verified with
allowed_signers = "trust/allowed_signers"
approvers = "trust/approvers"
model_signing_public_key = "trust/model_signing.pub"
revoked_keys = "trust/revoked_keys"

[signing]          # or mode = "pkcs11" / "certificate" (README, "Trust roots")
private_key = "keys/model_signing.key"

[data.train]
dir = "{train}"
manifest = "manifests/train.json"

[data.golden]
dir = "{golden}"
manifest = "manifests/golden.json"
# pinned_root_digest = "sha256:..."   # pin the golden set once its manifest is committed (docs/policy.md)

[training]
command = ["{{python}}", "-m", "training.train"]
timeout_seconds = 1800
threads = 1
{lock}

[sandbox]
mode = "bubblewrap"

[evaluation]
min_test_accuracy = 0.90
min_golden_accuracy = 0.90

[robustness]
epsilons = [0.025, 0.05, 0.1, 0.15, 0.2, 0.3]
gating_epsilon = 0.05
min_robust_accuracy = 0.70
samples = 360

[backdoor]         # recalibrate for your model: bench/calibrate_backdoor.py
ratio = 0.75
ratio_no_production = 0.70
stand_in_models = 5

[golden_regression]
alpha = 0.01

[advisory]
enabled = true

[approval]         # one ml-lead and one security approver, two different people (roles in trust/approvers)
require = {{ all_of = [{{ role = "ml-lead" }}, {{ role = "security" }}] }}
quorum = 2

[registry]
path = "registry"

[ledger]           # every entry signed with keys/ledger.key: a line anyone else appends is refused
path = "ledger.jsonl"
public_key = "trust/ledger.pub"
key = "keys/ledger.key"
# checkpoints = "/srv/airlock/trust-repo"   # a git repo: signed checkpoints after every run; push the ref elsewhere

[run]
workdir = "runs"
"""


def _pubkey(spec: str, flag: str) -> tuple[str, str, str]:
    """EMAIL=PATH[:ROLES] -> (email, 'type base64', roles)."""
    email, sep, rest = spec.partition("=")
    if not sep or not _EMAIL.match(email):
        raise UsageError(
            f"{flag} {spec!r}: expected EMAIL=PUBKEY_FILE", f"e.g. {flag} alice@corp=~/.ssh/id_ed25519.pub"
        )
    path, _, roles = rest.partition(":") if flag == "--approver" else (rest, "", "")
    p = Path(path).expanduser()
    try:
        parts = p.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"{flag} {email}: cannot read {p} ({type(e).__name__})", "give an OpenSSH public key file"
        ) from None
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise UsageError(f"{flag} {email}: {p} is not an OpenSSH public key", "give the .pub file")
    if flag == "--approver" and (not roles or not all(_ROLE.match(r) for r in roles.split(","))):
        raise UsageError(
            f"--approver {email}: name the roles after the key, e.g. ...:ml-lead or ...:security",
            "roles are lower-case words separated by commas",
        )
    return email, f"{parts[0]} {parts[1]}", roles


def init(args) -> int:
    from airlock import modelsign
    from airlock.ledger import generate_key as generate_ledger_key

    home = Path(args.dir).expanduser().resolve()
    repo = Path(args.repo).expanduser().resolve()
    if home.exists() and any(home.iterdir()):
        raise UsageError(f"{home} is not empty", "choose a new directory: init never overwrites a policy or a key")
    if not (repo / ".git").exists():
        raise UsageError(f"{repo} is not a git repository", "give the training repository (your fork) with --repo")
    if home == repo or repo in home.parents:
        raise UsageError(f"{home} lies inside the repository {repo}", "keep the policy and trust files outside it")
    signers = [_pubkey(s, "--signer") for s in args.signer]
    approvers = [_pubkey(a, "--approver") for a in args.approver]
    roles = {r for _, _, rs in approvers for r in rs.split(",")}
    missing = [r for r in ("ml-lead", "security") if r not in roles]
    if missing:
        raise UsageError(
            f"the default approval policy needs an ml-lead and a security approver; no {missing[0]} given",
            f"add --approver EMAIL=KEY.pub:{missing[0]}",
        )
    trust, keys = home / "trust", home / "keys"
    trust.mkdir(parents=True)
    keys.mkdir(mode=0o700)
    (trust / "allowed_signers").write_text("".join(f'{e} namespaces="git" {k}\n' for e, k, _ in signers))
    (trust / "approvers").write_text(
        "".join(f'{e} namespaces="airlock-approval" {k} roles={r}\n' for e, k, r in approvers)
    )
    (trust / "revoked_keys").write_text("")
    modelsign.generate_keypair(keys / "model_signing.key", trust / "model_signing.pub")
    os.chmod(keys / "model_signing.key", 0o600)
    generate_ledger_key(keys / "ledger.key", trust / "ledger.pub")
    (home / "airlock.toml").write_text(
        POLICY.format(
            repo=repo,
            train=Path(args.train_data).resolve(),
            golden=Path(args.golden_data).resolve(),
            lock=_lock_line(Path(repo)),
        )
    )
    policy = home / "airlock.toml"
    print(f"wrote {policy} and {trust}/ (allowed_signers, approvers, model_signing.pub, ledger.pub, revoked_keys)")
    print(f"model-signing private key: {keys / 'model_signing.key'} (mode 0600; only the flow may read it)")
    print(f"ledger key: {keys / 'ledger.key'} (mode 0600; the flow and `airlock data ingest` append with it)")
    print("next:", file=sys.stderr)
    for line in (
        f"airlock data manifest {Path(args.train_data).resolve()} --dataset train --out {repo}/manifests/train.json",
        f"airlock data manifest {Path(args.golden_data).resolve()} --dataset golden --out {repo}/manifests/golden.json",
        f'git -C {repo} add manifests && git -C {repo} commit -S -m "Data manifests"',
        f"airlock run --config {policy}",
    ):
        print(f"  {line}", file=sys.stderr)
    return 0


def _lock_line(repo: Path) -> str:
    """The trainer's lock (airlock/trainer_env.py), if the repository has one where the example trainer keeps it."""
    for rel in ("training/requirements.lock", "requirements.lock"):
        if (repo / rel).is_file():
            return f'lock = "{rel}"   # the trainer\'s packages, installed with every hash checked (docs/policy.md)'
    return '# lock = "requirements.lock"   # commit a lock with hashes (pip-compile --generate-hashes), then set it'
