"""Ledger checkpoints published outside the ledger: truncating its tail, or rewriting the whole chain, is detected.

A checkpoint is ``{"seq", "hash", "entries", "time"}`` of the ledger's head, signed with the ledger key, committed to
``refs/airlock/ledger-checkpoints`` of a git repository (``[ledger] checkpoints``: a clone of the trust repository,
say), one commit per checkpoint, each on top of the last. Push that ref somewhere the ledger's machine cannot
rewrite (a protected ref on the trust repository's server: no force-push), e.g. from cron::

    git -C /srv/airlock/trust push origin refs/airlock/ledger-checkpoints

Security rules:
* Every checkpoint in the ref's history must still hold in the ledger: entry ``seq`` exists and has ``hash``. A
  ledger cut back below a checkpoint, or rebuilt (re-chained and even re-signed by someone holding the key) from an
  earlier point, fails :func:`check`, naming the checkpoint.
* A checkpoint is only believed if the ledger key signed it: a ref that someone else wrote is refused, not skipped.
* The ref is updated compare-and-swap (``git update-ref REF new old``): two writers cannot silently drop one
  another's checkpoint; the loser retries on the new head.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from pathlib import Path

from airlock.errors import GitError, LedgerError
from airlock.gitutil import git
from airlock.ledger import Ledger, canonical

REF = "refs/airlock/ledger-checkpoints"
FORMAT = "airlock-ledger-checkpoint/v1"


def _head(repo: Path) -> str | None:
    res = git(repo, "rev-parse", "--verify", "--quiet", f"{REF}^{{commit}}", check=False)
    return res.stdout.strip() or None


def publish(ledger: Ledger, repo: Path) -> dict:
    """Sign the ledger's head and commit it to the checkpoint ref (after checking the earlier checkpoints)."""
    if not ledger.signed:
        raise LedgerError(
            "ledger checkpoints need a signed ledger", "set ledger.public_key and ledger.key (docs/policy.md)"
        )
    check(ledger, repo)  # never publish on top of a ledger that already contradicts what was published
    head = ledger.head()
    count = head.seq + 1
    body = {
        "format": FORMAT,
        "seq": head.seq,
        "hash": head.hash,
        "entries": count,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    payload = canonical(body)
    sig = base64.b64encode(ledger.sign(payload)).decode()
    for _attempt in range(5):
        parent = _head(repo)
        blob_cp = _text(git(repo, "hash-object", "-w", "--stdin", stdin=payload).stdout)
        blob_sig = _text(git(repo, "hash-object", "-w", "--stdin", stdin=sig.encode()).stdout)
        tree_spec = f"100644 blob {blob_cp}\tcheckpoint.json\n100644 blob {blob_sig}\tcheckpoint.sig\n".encode()
        tree = _text(git(repo, "mktree", stdin=tree_spec).stdout)
        commit_args = ["commit-tree", tree, "-m", f"ledger checkpoint seq {head.seq}"]
        if parent:
            commit_args += ["-p", parent]
        commit = _text(
            git(repo, "-c", "user.name=airlock", "-c", "user.email=airlock@localhost", *commit_args, stdin=b"").stdout
        )
        # Compare-and-swap: refused if another checkpoint landed since we read the head.
        res = git(repo, "update-ref", REF, commit, parent or "0" * 40, check=False)
        if res.returncode == 0:
            return body
    raise LedgerError(f"could not update {REF} in {repo}: other writers kept moving it", "retry")


def published(repo: Path, ledger: Ledger) -> list[dict]:
    """Every checkpoint in the ref's history, oldest first, each verified against the ledger key."""
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise LedgerError(f"the checkpoint repository {repo} is not a git repository", "fix ledger.checkpoints")
    head = _head(repo)
    if head is None:
        return []
    out = []
    try:
        commits = _text(git(repo, "rev-list", "--reverse", REF).stdout).split()
        for c in commits:
            raw = git(repo, "show", f"{c}:checkpoint.json", binary=True).stdout
            sig = git(repo, "show", f"{c}:checkpoint.sig", binary=True).stdout
            if not ledger.verify_signature(raw, base64.b64decode(sig, validate=True)):
                raise LedgerError(
                    f"checkpoint commit {c[:12]} in {repo} is not signed by the ledger key",
                    "someone else wrote the checkpoint ref: investigate, and restore it from the server's copy",
                )
            cp = json.loads(raw)
            if cp.get("format") != FORMAT or type(cp.get("seq")) is not int or not isinstance(cp.get("hash"), str):
                raise LedgerError(f"checkpoint commit {c[:12]} in {repo} is malformed", "investigate")
            out.append(cp | {"commit": c})
    except (GitError, ValueError) as e:
        if isinstance(e, LedgerError):
            raise
        raise LedgerError(f"cannot read the checkpoints in {repo}: {e}", "check ledger.checkpoints") from None
    return out


def check(ledger: Ledger, repo: Path) -> int:
    """LedgerError unless every published checkpoint still holds in the ledger. Returns how many were checked."""
    cps = published(repo, ledger)
    if not cps:
        return 0
    seen: dict[int, str] = {e["seq"]: e["hash"] for e in ledger.entries()}
    for cp in cps:
        got = seen.get(cp["seq"])
        if got is None:
            raise LedgerError(
                f"the ledger {ledger.path} ends before seq {cp['seq']}, which the checkpoint of {cp.get('time')} "
                f"({cp['commit'][:12]}) saw: its tail was cut off",
                "treat the log as tampered; restore it from a backup and investigate",
            )
        if got != cp["hash"]:
            raise LedgerError(
                f"the ledger's entry seq {cp['seq']} is not the one the checkpoint of {cp.get('time')} "
                f"({cp['commit'][:12]}) saw: the chain was rewritten from there or before",
                "treat the log as tampered; restore it from a backup and investigate",
            )
    return len(cps)


def _text(out) -> str:
    return (out.decode() if isinstance(out, bytes) else str(out)).strip()
