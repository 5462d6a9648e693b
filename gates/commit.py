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
from gates._result import GateResult

GATE = "commit"
# Commits checked in one go; a longer range is reported as one refusal per first bad commit anyway.
MAX_COMMITS = 100_000

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
    def from_policy(cls, pol) -> SignerPolicy:
        """From a policy whose trust roots were pinned (airlock.trust.pin): the run's copies, never the repo's."""
        t = pol.trust
        return cls(t.allowed_signers, t.revoked_keys, t.gpg_home, frozenset(t.gpg_fingerprints))

    def git_kwargs(self) -> dict:
        return {"allowed_signers": self.allowed_signers, "revoked_keys": self.revoked_keys, "gnupg_home": self.gpg_home}


def check(repo: str | Path, signers: SignerPolicy | Path, base: str | None = None) -> GateResult:
    if not isinstance(signers, SignerPolicy):
        signers = SignerPolicy(Path(signers))
    repo = Path(repo)
    try:
        top = toplevel(repo)
    except GitError as e:
        return GateResult.fail(GATE, e.one_line(), evidence={"repo": str(repo)}, code="commit.no_repository")
    try:
        signers_bytes = signers.allowed_signers.read_bytes()
    except OSError as e:
        return GateResult.fail(
            GATE,
            f"cannot read allowed signers {signers.allowed_signers}: {e.strerror} — "
            "point trust.allowed_signers at the OpenSSH allowed_signers file",
            code="commit.trust_root_unreadable",
        )
    if not signers.gpg_fingerprints and not any(
        line.strip() and not line.lstrip().startswith(b"#") for line in signers_bytes.splitlines()
    ):
        return GateResult.fail(
            GATE, "the allowed signers list no key — add the trusted committers' keys", code="commit.no_signers"
        )

    evidence: dict = {
        "repo": str(top),
        "allowed_signers_sha256": hashlib.sha256(signers_bytes).hexdigest(),
        "gpg_fingerprints": sorted(signers.gpg_fingerprints),
        "base": base,
    }
    try:
        sha = git(top, "rev-parse", "--verify", "HEAD^{commit}").stdout.strip()
        evidence["commit"] = sha
        if base:
            # History rewritten under production: the commit production was trained from is gone from HEAD's past.
            if git(top, "cat-file", "-e", f"{base}^{{commit}}", check=False).returncode != 0:
                return GateResult.fail(
                    GATE,
                    f"base commit {base[:12]} is not in the repository — fetch the full "
                    "history (no shallow clone) or fix repo.base_commit",
                    evidence=evidence,
                    code="commit.base_missing",
                )
            if git(top, "merge-base", "--is-ancestor", base, sha, check=False).returncode != 0:
                return GateResult.fail(
                    GATE,
                    f"base commit {base[:12]} is not an ancestor of HEAD {sha[:12]}: history "
                    "was rewritten — rebuild the branch on top of it",
                    evidence=evidence,
                    code="commit.history_rewritten",
                )
        # HEAD == base (a scheduled retrain on new data, no new code): HEAD itself is checked again.
        rng = [f"{base}..{sha}"] if base and base != sha else (["-1", sha] if base else [sha])
        # Pinned config: a repo-local gpg.ssh.program or allowedSignersFile cannot vouch for any commit.
        log = git(
            top,
            "log",
            f"--max-count={MAX_COMMITS}",
            "--format=%H%x00%G?%x00%GS%x00%GF%x00%GP%x00%s%x1e",
            *rng,
            "--",
            **signers.git_kwargs(),
        ).stdout
        status = git(top, "status", "--porcelain=v1", "--untracked-files=all", "--ignore-submodules=all").stdout
    except GitError as e:
        return GateResult.fail(GATE, e.one_line(), evidence=evidence, code="commit.git_failed")

    commits = []
    for rec in log.split("\x1e"):
        rec = rec.strip("\n")
        if rec:
            h, code, signer, fp, primary, subject = (rec.split("\x00") + [""] * 6)[:6]
            commits.append(
                {
                    "commit": h,
                    "status": code,
                    "signer": signer,
                    "fingerprint": fp,
                    "primary": primary,
                    "subject": subject,
                }
            )
    evidence["commits_checked"] = len(commits)
    if not commits:
        return GateResult.fail(
            GATE,
            f"no commits between base {str(base)[:12]} and HEAD — nothing to train",
            evidence=evidence,
            code="commit.no_commits",
        )
    # `git log` lists newest first: report the oldest bad commit, where the attacker's change entered.
    for position, c in enumerate(reversed(commits), start=1):
        where = (
            f"commit {c['commit'][:12]} ({position} of {len(commits)} since {'base ' + base[:12] if base else 'the root'}, "
            f'"{c["subject"][:60]}")'
        )
        code = c["status"]
        if code == "B" and signers.revoked_keys is not None and _good_without_revocation(top, c["commit"], signers):
            code = "R"  # OpenSSH reports a revoked key as a bad signature: say what it is
        # Unsigned, foreign-signed, untrusted, expired, revoked or altered commit anywhere in the range.
        if code != "G":
            msg = _STATUS.get(code, "has signature status " + code).format(fp=c["fingerprint"] or "?")
            evidence["refused"] = c
            return GateResult.fail(
                GATE,
                f"{where} {msg} — every commit since {'production' if base else 'the root'} "
                "must be signed by an allowed signer; remove it or have it re-signed",
                evidence=evidence,
                code=_CODES.get(code, "commit.bad_signature"),
            )
        # GPG: trusted in the keyring is not enough; the key must be on the policy's allow-list too.
        if not c["fingerprint"].startswith("SHA256:"):
            keys = {c["fingerprint"].upper(), c["primary"].upper()}
            if not keys & signers.gpg_fingerprints:
                evidence["refused"] = c
                return GateResult.fail(
                    GATE,
                    f"{where} is signed by GPG key {c['primary'] or c['fingerprint']}, which "
                    "is not on trust.gpg_fingerprints — add it to the allow-list if it is "
                    "trusted (e.g. a forge's merge key)",
                    evidence=evidence,
                    code="commit.gpg_not_allowed",
                )
    head = commits[0]
    evidence.update(
        signer=head["signer"],
        key_fingerprint=head["fingerprint"],
        subject=head["subject"],
        signature_status=head["status"],
    )
    # Uncommitted changes: code or files that no signature covers would ride along with the signed commit.
    if status.strip():
        dirty = [line[3:] for line in status.splitlines() if line.strip()]
        evidence["dirty"] = dirty
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        return GateResult.fail(
            GATE,
            f"working tree of {top.name} is not clean: {shown} — commit (signed) or remove them",
            evidence=evidence,
            code="commit.dirty_tree",
        )
    signer = head["signer"] or head["primary"]
    return GateResult.ok(
        GATE,
        f"HEAD {sha[:12]} signed by {signer} ({head['fingerprint']}); "
        f"{len(commits)} commit(s) since {'base ' + base[:12] if base else 'the root'} all signed; tree clean",
        metrics={"commits_checked": float(len(commits))},
        evidence=evidence,
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
