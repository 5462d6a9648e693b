"""Signed-commit gate: the training code is exactly a history of commits signed by trusted people.

Rules:
* Every commit from the base (the training commit of the current production model, else the policy's
  ``repo.base_commit``, else the root) up to HEAD carries a good signature by an allowed signer: SSH keys listed in
  the allowed-signers file and not revoked, or GPG keys in the dedicated keyring that are trusted at least
  ``fully`` AND on the fingerprint allow-list. git's ``%G?`` must be ``G`` for each.
* The base is an ancestor of HEAD: history that production was trained from cannot be rewritten underneath it.
* The working tree is clean, untracked files included.
* git runs with isolated config (see :mod:`airlock.gitutil`); repository-local config cannot fake a signature.
* Trust roots never come from the commit under test (see :mod:`airlock.trust`).

SSH signatures carry no trusted time: a key's ``valid-before`` is judged against the committer date, which the
signer chooses. Revoke a key by listing it in ``trust.revoked_keys`` (or removing it), not by expiry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from airlock.gitutil import GitError, git, toplevel
from airlock.policy import Policy
from gates._result import GateResult

GATE = "commit"
# Commits checked in one go; a longer range is reported as one refusal per first bad commit anyway.
MAX_COMMITS = 100_000
RANGE_SHOWN = 50

_STATUS = {
    "N": "is not signed",
    "U": "is signed by a key that is not trusted ({fp})",
    "B": "has a BAD signature (altered after signing)",
    "E": "has a signature that cannot be checked (key not in the trusted keyring: {fp})",
    "X": "has an expired signature ({fp})",
    "Y": "is signed by an expired key ({fp})",
    "R": "is signed by a revoked key ({fp})",
}


# git's %G? status -> the refusal code (stable; tests assert them).
_CODES = {
    "N": "commit.unsigned",
    "U": "commit.untrusted_key",
    "E": "commit.unknown_key",
    "B": "commit.bad_signature",
    "X": "commit.expired_signature",
    "Y": "commit.expired_key",
    "R": "commit.revoked_key",
}


@dataclass(frozen=True)
class SignerPolicy:
    """Who may sign training commits. Built from the trust roots, never from the repository under test."""

    allowed_signers: Path
    revoked_keys: Path | None = None
    gpg_home: Path | None = None
    gpg_fingerprints: frozenset[str] = frozenset()

    @classmethod
    def from_policy(cls, pol: Policy) -> SignerPolicy:
        """From a policy whose trust roots were pinned (airlock.trust.pin): the run's copies, never the repo's."""
        t = pol.trust
        return cls(t.allowed_signers, t.revoked_keys, t.gpg_home, frozenset(t.gpg_fingerprints))

    def git_kwargs(self) -> dict:
        return {"allowed_signers": self.allowed_signers, "revoked_keys": self.revoked_keys, "gnupg_home": self.gpg_home}


class _Refused(Exception):
    """A step's refusal: the GateResult that check() returns."""

    def __init__(self, reason: str, code: str, evidence: dict | None = None) -> None:
        super().__init__(reason)
        self.result = GateResult.fail(GATE, reason, evidence=evidence or {}, code=code)


def check(repo: str | Path, signers: SignerPolicy | Path, base: str | None = None) -> GateResult:
    """The signed-commit gate, one step per rule; the first refusal is the verdict."""
    if not isinstance(signers, SignerPolicy):
        signers = SignerPolicy(Path(signers))
    evidence: dict = {"repo": str(repo), "base": base}
    try:
        top = _repository(Path(repo), evidence)
        _trust_root(signers, evidence)
        sha = _head(top, evidence)
        if base:
            _base_in_history(top, base, sha, evidence)
        commits = _signed_range(top, base, sha, signers, evidence)
        for position, c in enumerate(reversed(commits), start=1):  # oldest first: where the attacker's change entered
            _commit_signed_by_allowed_signer(top, c, position, len(commits), base, signers, evidence)
        head = commits[0]
        evidence.update(
            signer=head["signer"],
            key_fingerprint=head["fingerprint"],
            subject=head["subject"],
            signature_status=head["status"],
        )
        _tree_clean(top, evidence)
    except _Refused as r:
        return r.result
    signer = head["signer"] or head["primary"]
    return GateResult.ok(
        GATE,
        f"HEAD {sha[:12]} signed by {signer} ({head['fingerprint']}); "
        f"{len(commits)} commit(s) since {'base ' + base[:12] if base else 'the root'} all signed; tree clean",
        metrics={"commits_checked": len(commits)},
        evidence=evidence,
    )


def _repository(repo: Path, evidence: dict) -> Path:
    try:
        top = toplevel(repo)
    except GitError as e:
        raise _Refused(e.one_line(), "commit.no_repository", evidence) from None
    evidence["repo"] = str(top)
    return top


def _trust_root(signers: SignerPolicy, evidence: dict) -> None:
    """The allowed signers are readable and list a key: an empty trust root would trust nobody, silently."""
    try:
        signers_bytes = signers.allowed_signers.read_bytes()
    except OSError as e:
        raise _Refused(
            f"cannot read allowed signers {signers.allowed_signers}: {e.strerror} — "
            "point trust.allowed_signers at the OpenSSH allowed_signers file",
            "commit.trust_root_unreadable",
        ) from None
    if not signers.gpg_fingerprints and not any(
        line.strip() and not line.lstrip().startswith(b"#") for line in signers_bytes.splitlines()
    ):
        raise _Refused("the allowed signers list no key — add the trusted committers' keys", "commit.no_signers")
    evidence["allowed_signers_sha256"] = hashlib.sha256(signers_bytes).hexdigest()
    evidence["gpg_fingerprints"] = sorted(signers.gpg_fingerprints)


def _head(top: Path, evidence: dict) -> str:
    try:
        sha = git(top, "rev-parse", "--verify", "HEAD^{commit}").stdout.strip()
    except GitError as e:
        raise _Refused(e.one_line(), "commit.git_failed", evidence) from None
    evidence["commit"] = sha
    return sha


def _base_in_history(top: Path, base: str, sha: str, evidence: dict) -> None:
    """History rewritten under production: the commit production was trained from is gone from HEAD's past."""
    if git(top, "cat-file", "-e", f"{base}^{{commit}}", check=False).returncode != 0:
        raise _Refused(
            f"base commit {base[:12]} is not in the repository — fetch the full "
            "history (no shallow clone) or fix repo.base_commit",
            "commit.base_missing",
            evidence,
        )
    if git(top, "merge-base", "--is-ancestor", base, sha, check=False).returncode != 0:
        raise _Refused(
            f"base commit {base[:12]} is not an ancestor of HEAD {sha[:12]}: history "
            "was rewritten — rebuild the branch on top of it",
            "commit.history_rewritten",
            evidence,
        )


def _signed_range(top: Path, base: str | None, sha: str, signers: SignerPolicy, evidence: dict) -> list[dict]:
    """Every commit since base (since the root without one), newest first, with git's verdict on its signature."""
    # HEAD == base (a scheduled retrain on new data, no new code): HEAD itself is checked again.
    rng = [f"{base}..{sha}"] if base and base != sha else (["-1", sha] if base else [sha])
    try:
        # Pinned config: a repo-local gpg.ssh.program or allowedSignersFile cannot vouch for any commit.
        log = git(
            top,
            "log",
            f"--max-count={MAX_COMMITS}",
            "--format=%H%x00%G?%x00%GS%x00%GF%x00%GP%x00%ae%x00%ce%x00%s%x1e",
            *rng,
            "--",
            **signers.git_kwargs(),
        ).stdout
    except GitError as e:
        raise _Refused(e.one_line(), "commit.git_failed", evidence) from None
    commits = []
    for rec in log.split("\x1e"):
        rec = rec.strip("\n")
        if rec:
            h, status, signer, fp, primary, author, committer, subject = (rec.split("\x00") + [""] * 8)[:8]
            commits.append(
                {
                    "commit": h,
                    "status": status,
                    "signer": signer,
                    "fingerprint": fp,
                    "primary": primary,
                    "author_email": author,
                    "committer_email": committer,
                    "subject": subject,
                }
            )
    evidence["commits_checked"] = len(commits)
    # Everyone who wrote, committed or signed a commit of the range, by address and by key: none of them may approve
    # the model trained from it (airlock/approvals.py, separation of duties).
    # What approvers see of the range (newest first; the first 50).
    evidence["range"] = [
        {k: c[k] for k in ("commit", "subject", "author_email", "signer")} for c in commits[:RANGE_SHOWN]
    ]
    evidence["identities"] = {
        "emails": sorted({e.lower() for c in commits for e in (c["author_email"], c["committer_email"]) if e}),
        "signers": sorted({c["signer"] for c in commits if c["signer"]}),
        "key_fingerprints": sorted({k for c in commits for k in (c["fingerprint"], c["primary"]) if k}),
    }
    if not commits:
        raise _Refused(
            f"no commits between base {str(base)[:12]} and HEAD — nothing to train", "commit.no_commits", evidence
        )
    return commits


def _commit_signed_by_allowed_signer(
    top: Path, c: dict, position: int, total: int, base: str | None, signers: SignerPolicy, evidence: dict
) -> None:
    where = (
        f"commit {c['commit'][:12]} ({position} of {total} since {'base ' + base[:12] if base else 'the root'}, "
        f'"{c["subject"][:60]}")'
    )
    status = c["status"]
    if status == "B" and signers.revoked_keys is not None and _good_without_revocation(top, c["commit"], signers):
        status = "R"  # OpenSSH reports a revoked key as a bad signature: say what it is
    # Unsigned, foreign-signed, untrusted, expired, revoked or altered commit anywhere in the range.
    if status != "G":
        msg = _STATUS.get(status, "has signature status " + status).format(fp=c["fingerprint"] or "?")
        evidence["refused"] = c
        raise _Refused(
            f"{where} {msg} — every commit since {'production' if base else 'the root'} "
            "must be signed by an allowed signer; remove it or have it re-signed",
            _CODES.get(status, "commit.bad_signature"),
            evidence,
        )
    # GPG: trusted in the keyring is not enough; the key must be on the policy's allow-list too.
    if not c["fingerprint"].startswith("SHA256:"):
        keys = {c["fingerprint"].upper(), c["primary"].upper()}
        if not keys & signers.gpg_fingerprints:
            evidence["refused"] = c
            raise _Refused(
                f"{where} is signed by GPG key {c['primary'] or c['fingerprint']}, which "
                "is not on trust.gpg_fingerprints — add it to the allow-list if it is "
                "trusted (e.g. a forge's merge key)",
                "commit.gpg_not_allowed",
                evidence,
            )


def _tree_clean(top: Path, evidence: dict) -> None:
    """Uncommitted changes: code or files that no signature covers would ride along with the signed commit."""
    try:
        status = git(top, "status", "--porcelain=v1", "--untracked-files=all", "--ignore-submodules=all").stdout
    except GitError as e:
        raise _Refused(e.one_line(), "commit.git_failed", evidence) from None
    if status.strip():
        dirty = [line[3:] for line in status.splitlines() if line.strip()]
        evidence["dirty"] = dirty
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        raise _Refused(
            f"working tree of {top.name} is not clean: {shown} — commit (signed) or remove them",
            "commit.dirty_tree",
            evidence,
        )


def _good_without_revocation(top: Path, sha: str, signers: SignerPolicy) -> bool:
    res = git(
        top,
        "log",
        "-1",
        "--format=%G?",
        sha,
        allowed_signers=signers.allowed_signers,
        gnupg_home=signers.gpg_home,
        check=False,
    )
    return res.stdout.strip() in ("G", "U")
