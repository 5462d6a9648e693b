"""Signed-commit gate: the training code is exactly a commit signed by a trusted person.

Rules:
* HEAD of the training repository carries a valid SSH signature by a key in the allowed-signers file named by the
  policy (git's ``%G?`` must be ``G``: good signature by an allowed principal).
* The working tree is clean, untracked files included.
* git runs with isolated config (see :mod:`airlock.gitutil`); repository-local config cannot fake a signature.
* The allowed-signers file is a trust root: it must not live inside the repository it judges.

Attacks it blocks are named at each check below.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from airlock.gitutil import GitError, git, toplevel
from gates._result import GateResult

GATE = "commit"

_STATUS = {
    "N": "HEAD {sha} is not signed",
    "U": "HEAD {sha} is signed by a key that is not in the allowed signers ({fp})",
    "B": "HEAD {sha} has a BAD signature (the commit was altered after signing)",
    "E": "HEAD {sha}'s signature cannot be checked (missing key or signature program)",
    "X": "HEAD {sha}'s signature has expired",
    "Y": "HEAD {sha} is signed by an expired key ({fp})",
    "R": "HEAD {sha} is signed by a revoked key ({fp})",
}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def check(repo: str | Path, allowed_signers: str | Path, trust_files: dict[str, Path] | None = None) -> GateResult:
    repo, allowed_signers = Path(repo), Path(allowed_signers)
    try:
        top = toplevel(repo)
    except GitError as e:
        return GateResult.fail(GATE, e.one_line(), evidence={"repo": str(repo)})

    # Self-vouching commit: a commit that adds its own key to an allowed-signers file inside the repository
    # would be judged by itself. Trust roots must come from outside what they judge.
    for key, path in {"trust.allowed_signers": allowed_signers, **(trust_files or {})}.items():
        if _inside(Path(path), top):
            return GateResult.fail(GATE, f"trust file {key} = {path} lies inside the repository under test — "
                                         "keep trust files outside the training repository", evidence={"repo": str(top)})
    try:
        signers_bytes = allowed_signers.read_bytes()
    except OSError as e:
        return GateResult.fail(GATE, f"cannot read allowed signers {allowed_signers}: {e.strerror} — "
                                     "point trust.allowed_signers at the OpenSSH allowed_signers file", evidence={})
    if not any(l.strip() and not l.lstrip().startswith(b"#") for l in signers_bytes.splitlines()):
        return GateResult.fail(GATE, f"allowed signers {allowed_signers} lists no key — add the trusted committers' keys",
                               evidence={})

    try:
        sha = git(top, "rev-parse", "--verify", "HEAD^{commit}").stdout.strip()
        # Pinned config: a repo-local gpg.ssh.program or allowedSignersFile cannot vouch for the commit.
        fmt = git(top, "log", "-1", "--format=%G?%x00%GS%x00%GF%x00%an <%ae>%x00%s", sha,
                  allowed_signers=allowed_signers).stdout
        status = git(top, "status", "--porcelain=v1", "--untracked-files=all", "--ignore-submodules=none").stdout
    except GitError as e:
        return GateResult.fail(GATE, e.one_line(), evidence={"repo": str(top)})
    code, signer, fingerprint, author, subject = (fmt.rstrip("\n").split("\x00") + [""] * 5)[:5]
    evidence = {
        "repo": str(top), "commit": sha, "signature_status": code, "signer": signer, "key_fingerprint": fingerprint,
        "author": author, "subject": subject,
        "allowed_signers": str(allowed_signers),
        "allowed_signers_sha256": hashlib.sha256(signers_bytes).hexdigest(),
    }
    # Malicious or unreviewed commit: unsigned, signed by an unknown key, or altered after signing.
    if code != "G":
        msg = _STATUS.get(code, "HEAD {sha} has signature status {code}").format(sha=sha[:12], fp=fingerprint or "?", code=code)
        return GateResult.fail(GATE, f"{msg} — have a trusted committer sign it (git commit -S) or add their key to "
                                     f"{allowed_signers.name} out of band", evidence=evidence)
    # Uncommitted changes: code or files that no signature covers would ride along with the signed commit.
    if status.strip():
        dirty = [l[3:] for l in status.splitlines() if l.strip()]
        evidence["dirty"] = dirty
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        return GateResult.fail(GATE, f"working tree of {top.name} is not clean: {shown} — commit (signed) or remove them",
                               evidence=evidence)
    return GateResult.ok(GATE, f"HEAD {sha[:12]} signed by {signer} ({fingerprint}), tree clean", evidence=evidence)
