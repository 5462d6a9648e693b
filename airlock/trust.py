"""Trust roots: who may sign training commits, who may approve, which key verifies models.

Security rules:
* Trust roots never come from what they judge. They are read either from a *protected ref* of the training
  repository named by the policy (``trust.ref``, e.g. ``origin/main``: a branch only reviewed merges reach), or from
  paths outside the repository. Never from the commit under test: a commit that adds its own key to an
  allowed-signers file in its own tree is not thereby trusted.
* The policy file itself is a trust root: it must lie outside the repository under test.
* What was read is copied into the run's directory and its sha256 recorded, so every later step (approvals,
  promotion) judges by exactly the same roots. The copies lie where no team code can reach them (the sandbox sees
  none of the run's trust directory) and are re-hashed before every decision (:func:`at_decision`): a copy that
  changed under the run fails it, naming the file. The policy file is re-hashed too.
* Revocation is read at decision time: :func:`at_decision` also reads the roots afresh from their source, and a
  decision must pass under both the run's copies and the roots in force now. A key revoked (or an approver
  removed) while a run waits is refused at its approval and at promotion; a key added meanwhile does not help the
  run that started without it.

A protected ref is only as protected as the forge makes it: CI must fetch it fresh from the forge's protected
branch; a local branch anyone can move is no trust root.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from airlock.errors import TrustRootError
from airlock.gitutil import GitError, git, toplevel
from airlock.policy import Policy


@dataclass(frozen=True)
class TrustRoots:
    allowed_signers: Path
    approvers: Path
    model_signing_public_key: Path
    revoked_keys: Path | None = None
    gpg_home: Path | None = None
    gpg_fingerprints: frozenset[str] = frozenset()
    source: str = "files"
    digests: dict[str, str] = field(default_factory=dict)

    def evidence(self) -> dict:
        return {"source": self.source, "sha256": self.digests, "gpg_fingerprints": sorted(self.gpg_fingerprints)}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve(pol: Policy, dest: Path) -> TrustRoots:
    """Read the policy's trust roots into `dest` and return their paths there."""
    t = pol.trust
    top = _repository(pol)
    _outside_repository(pol, top)
    dest.mkdir(parents=True, exist_ok=True)
    names = {
        "allowed_signers": t.allowed_signers,
        "approvers": t.approvers,
        "model_signing_public_key": t.model_signing_public_key,
        "revoked_keys": t.revoked_keys,
    }
    if t.ref:
        assert top is not None  # trust.ref without a repository was refused by _repository
        source, out = _from_protected_ref(t.ref, top, names, dest)
    else:
        source, out = "files outside the repository", _from_files(top, names, dest)
    gpg_home = _copy_gpg_home(t.gpg_home, dest)
    digests = {k: _sha(v) for k, v in out.items() if v is not None}
    required = {k: out[k] for k in ("allowed_signers", "approvers", "model_signing_public_key")}
    missing = [k for k, v in required.items() if v is None]
    if missing:
        raise TrustRootError(f"trust.{missing[0]} is not set", "name it in airlock.toml")
    return TrustRoots(
        allowed_signers=Path(str(required["allowed_signers"])),
        approvers=Path(str(required["approvers"])),
        model_signing_public_key=Path(str(required["model_signing_public_key"])),
        revoked_keys=out["revoked_keys"],
        gpg_home=gpg_home,
        gpg_fingerprints=frozenset(t.gpg_fingerprints),
        source=source,
        digests=digests,
    )


def _repository(pol: Policy) -> Path | None:
    try:
        return toplevel(pol.repo.path)
    except GitError as e:
        if pol.trust.ref:
            raise TrustRootError(f"trust.ref needs the training repository: {e.what}", e.hint) from None
        return None  # no repository here (e.g. `airlock verify` on a serving host): nothing to be inside of


def _outside_repository(pol: Policy, top: Path | None) -> None:
    """A policy (or a GnuPG home) inside the repository under test could point the gates anywhere."""
    if top is None:
        return
    if _inside(pol.source, top):
        raise TrustRootError(
            f"the policy {pol.source} lies inside the repository under test",
            "keep airlock.toml outside the training repository (it is a trust root)",
        )
    if pol.trust.gpg_home is not None and _inside(pol.trust.gpg_home, top):
        raise TrustRootError(
            f"trust.gpg_home {pol.trust.gpg_home} lies inside the repository under test",
            "keep the GnuPG home outside the training repository",
        )


def _from_protected_ref(
    ref: str, top: Path, names: dict[str, Path | None], dest: Path
) -> tuple[str, dict[str, Path | None]]:
    """The trust files as committed on the protected ref (not as in the commit under test, not the work tree)."""
    try:
        sha = git(top, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}").stdout.strip()
    except GitError:
        raise TrustRootError(
            f"trust.ref {ref!r} does not name a commit in {top}",
            "fetch the protected branch first (git fetch origin main)",
        ) from None
    out: dict[str, Path | None] = {}
    for key, rel in names.items():
        if rel is None:
            out[key] = None
            continue
        res = git(top, "show", f"{sha}:{Path(rel).as_posix()}", binary=True, check=False)
        if res.returncode != 0:
            raise TrustRootError(
                f"trust.{key} {rel} is not in {ref} ({sha[:12]})",
                "commit it to the protected branch, or fix the path in airlock.toml",
            )
        (dest / key).write_bytes(res.stdout)
        out[key] = dest / key
    return f"ref {ref} @ {sha}", out


def _from_files(top: Path | None, names: dict[str, Path | None], dest: Path) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for key, path in names.items():
        if path is None:
            out[key] = None
            continue
        # Self-vouching commit: a trust file inside the repository would be judged by itself.
        if top is not None and _inside(path, top):
            raise TrustRootError(
                f"trust file trust.{key} = {path} lies inside the repository under test",
                "keep trust files outside the training repository, or read them from a protected ref (trust.ref)",
            )
        if not Path(path).is_file():
            raise TrustRootError(f"cannot read trust.{key} = {path}", "fix the path in airlock.toml")
        shutil.copyfile(path, dest / key)
        out[key] = dest / key
    return out


def _copy_gpg_home(home: Path | None, dest: Path) -> Path | None:
    if home is None:
        return None
    if not home.is_dir():
        raise TrustRootError(f"trust.gpg_home {home} is not a directory", "point it at a GnuPG home")
    gpg_home = dest / "gnupg"
    if gpg_home.exists():
        shutil.rmtree(gpg_home)
    # A private copy: gpg writes into its home, and agent sockets must not be copied.
    shutil.copytree(home, gpg_home, ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))
    gpg_home.chmod(stat.S_IRWXU)
    return gpg_home


def pin(pol: Policy, roots: TrustRoots):
    """The policy with its trust section pointing at the resolved copies: every later step judges by them."""
    from airlock.policy import TrustPolicy

    trust = TrustPolicy(
        ref=None,
        allowed_signers=roots.allowed_signers,
        approvers=roots.approvers,
        model_signing_public_key=roots.model_signing_public_key,
        revoked_keys=roots.revoked_keys,
        gpg_home=roots.gpg_home,
        gpg_fingerprints=sorted(roots.gpg_fingerprints),
    )
    return pol.model_copy(update={"trust": trust})


def recheck(roots: TrustRoots) -> None:
    """The run's copies are exactly what was read at the start (a trust file swapped under a waiting run)."""
    for key, digest in roots.digests.items():
        path = getattr(roots, key)
        try:
            now = _sha(path)
        except OSError:
            now = "missing"
        if now != digest:
            raise TrustRootError(
                f"the run's copy of trust.{key} ({path}) changed during the run (sha256 {digest[:12]}… → {now[:12]}…)",
                "nothing was approved or promoted; find who wrote it, then start a new run",
            )


def recheck_policy(pol: Policy) -> None:
    """The policy in force is the policy the run started with: the local file, and the protected copy at its ref."""
    from airlock.errors import PolicyError
    from airlock.policy import load

    try:
        now = load(pol.source)
        digest, protected = now.digest, now.protected
    except PolicyError:
        digest, protected = "missing or unreadable", None
    if digest != pol.digest:
        which = (
            f"the protected policy {pol.protected} (now {protected})"
            if pol.protected and protected != pol.protected
            else f"the policy {pol.source}"
        )
        raise TrustRootError(
            f"{which} changed during the run ({pol.digest[:19]}… → {digest[:19]}…)",
            "nothing was approved or promoted; start a new run under the new policy",
        )


def reopen(pol: Policy, dest: Path) -> TrustRoots:
    """A resumed run's trust roots (suspend mode: the flow starts again in a new process at each approval): the copies
    the run made at its start in ``dest``, or, where they are gone (a new pod without the run's directory), read
    afresh from the source. Either way the caller must hold them against the digests recorded, signed, with the run's
    model (:func:`require_recorded`): a run never resumes under roots it did not start with."""
    if not (dest / "approvers").is_file():
        return resolve(pol, dest)
    paths = {k: dest / k for k in ("allowed_signers", "approvers", "model_signing_public_key", "revoked_keys")}
    missing = [k for k in ("allowed_signers", "model_signing_public_key") if not paths[k].is_file()]
    if missing:
        raise TrustRootError(
            f"the run's copy of trust.{missing[0]} ({paths[missing[0]]}) is gone",
            "nothing was approved or promoted; find who removed it, then start a new run",
        )
    revoked = paths["revoked_keys"] if paths["revoked_keys"].is_file() else None
    return TrustRoots(
        allowed_signers=paths["allowed_signers"],
        approvers=paths["approvers"],
        model_signing_public_key=paths["model_signing_public_key"],
        revoked_keys=revoked,
        gpg_home=dest / "gnupg" if (dest / "gnupg").is_dir() else None,
        gpg_fingerprints=frozenset(pol.trust.gpg_fingerprints),
        source="the run's copies",
        digests={k: _sha(p) for k, p in paths.items() if p.is_file()},
    )


def require_recorded(roots: TrustRoots, recorded: object) -> TrustRoots:
    """The roots match, file for file, the digests recorded at the run's start (from its signed provenance)."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), dict):
        raise TrustRootError(
            "the run's signed provenance records no trust-root digests",
            "start a new run (it was made before they were)",
        )
    want: dict = recorded["sha256"]
    for key in sorted(set(want) | set(roots.digests)):
        if want.get(key) != roots.digests.get(key):
            raise TrustRootError(
                f"trust.{key} is not what the run started with (sha256 {str(want.get(key))[:12]}… → "
                f"{str(roots.digests.get(key))[:12]}…)",
                "nothing was approved or promoted; find who changed it, then start a new run",
            )
    source = recorded.get("source")
    return replace(roots, source=str(source)) if isinstance(source, str) else roots


def at_decision(original_pol, roots: TrustRoots, dest: Path) -> TrustRoots:
    """Before an approval decision or a promotion: re-hash the run's copies and the policy, then read the trust
    roots in force now from their source into ``dest`` (revocations and removals since the start apply)."""
    recheck(roots)
    recheck_policy(original_pol)
    if dest.exists():
        shutil.rmtree(dest)
    return resolve(original_pol, dest)
