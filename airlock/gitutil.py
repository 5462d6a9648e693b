"""Run git with a configuration nobody under test can change, and export a commit without running anything.

A repository's own ``.git/config`` (and ``.git/info/attributes``) is attacker-controlled, even with no new commit:

* it can point ``gpg.ssh.program`` at a script that claims any signature is good, or add its own
  ``gpg.ssh.allowedSignersFile`` -> every signature-relevant key is pinned on the command line, which overrides
  repository config, and ``GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1`` drop the other files;
* it can run a command: ``core.fsmonitor`` on ``git status``, a ``filter.<x>.smudge`` on ``git archive`` or a
  ``filter.<x>.clean`` on ``git status`` (selected by ``.git/info/attributes``), a ``diff.<x>.textconv``, a hook
  -> hooks go to ``/dev/null``, and every filter, diff and merge driver the effective config defines is overridden
  with an empty command (:func:`_neutralised`);
* whatever git runs inherits git's environment -> git gets an allowlisted environment (no token, no key path, no
  API URL), never the flow's.

The export (:func:`export_commit`) does not use ``git archive`` (which applies smudge filters, ``export-subst`` and
``export-ignore`` from attributes): it lists the commit's tree with ``ls-tree``, reads each blob raw with
``cat-file --batch`` and checks that the bytes hash to the blob id in the tree, so the files training runs are
exactly the signed commit's.

GitPython is deliberately not used for these calls: its high-level API reads repository config.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from airlock.errors import GitError

# Keys in the repository's config whose value is a command git may run, by pattern -> the value pinned instead.
_DRIVER_KEYS = re.compile(
    r"^(filter|diff|merge)\.(.+)\.(clean|smudge|process|textconv|command|driver|required)$", re.IGNORECASE
)


def pinned_config(allowed_signers: Path | None = None, revoked_keys: Path | None = None) -> list[str]:
    cfg = {
        "gpg.format": "ssh",
        "gpg.ssh.program": "ssh-keygen",
        "gpg.program": "gpg",
        "gpg.x509.program": "/bin/false",  # x509 signatures are not a trust root here: status E
        "gpg.ssh.allowedSignersFile": str(allowed_signers) if allowed_signers else "/dev/null",
        "gpg.ssh.revocationFile": str(revoked_keys) if revoked_keys else "/dev/null",
        "gpg.minTrustLevel": "fully",
        "core.fsmonitor": "false",
        "core.hooksPath": "/dev/null",
        "core.sshCommand": "false",
        "core.attributesFile": "/dev/null",
        "core.pager": "cat",
        "core.askPass": "",
        "credential.helper": "",
        "diff.external": "",
        "safe.directory": "*",
        "log.showSignature": "false",
    }
    args: list[str] = []
    for k, v in cfg.items():
        args += ["-c", f"{k}={v}"]
    return args


def isolated_env(gnupg_home: Path | None = None) -> dict[str, str]:
    """git's whole environment: an allowlist. Secrets in the caller's environment never reach git or what it runs."""
    env = {k: os.environ[k] for k in ("PATH", "TZ") if k in os.environ}
    env.update(
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_OPTIONAL_LOCKS="0",
        LC_ALL="C",
        HOME="/nonexistent",
        GIT_ATTR_NOSYSTEM="1",
    )
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if gnupg_home is not None:
        env["GNUPGHOME"] = str(gnupg_home)
    return env


def _neutralised(repo: str | Path, env: dict[str, str]) -> list[str]:
    """``-c`` overrides that empty every filter/diff/merge driver the repository's effective config defines.

    Reading config runs nothing (``include.path`` reads files). A driver name that cannot be written back as a
    ``-c`` key (an ``=`` or a newline in it) is refused rather than left active."""
    res = subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), "config", "--list", "--name-only", "-z"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    if res.returncode != 0:
        return []  # not a repository yet: the real command reports that
    out: list[str] = []
    for key in res.stdout.decode(errors="replace").split("\0"):
        m = _DRIVER_KEYS.match(key.strip())
        if not m:
            continue
        if "=" in key or "\n" in key:
            raise GitError(
                f"the repository's git config defines a driver git cannot override safely: {key[:80]!r}",
                "remove it from .git/config",
            )
        out += ["-c", f"{key}={'false' if m.group(3).lower() == 'required' else ''}"]
    return out


def git(
    repo: str | Path,
    *args: str,
    allowed_signers: Path | None = None,
    revoked_keys: Path | None = None,
    gnupg_home: Path | None = None,
    check: bool = True,
    binary: bool = False,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess:
    """Run git with pinned config. Signature checks use only the given trust roots: the allowed signers, the
    revocation file and a dedicated GnuPG home (never the user's ~/.gnupg: without one, an empty home is used)."""
    with tempfile.TemporaryDirectory(prefix="airlock-gnupg-") as empty:
        env = isolated_env(gnupg_home if gnupg_home is not None else Path(empty))
        try:
            cmd = [
                "git",
                *pinned_config(allowed_signers, revoked_keys),
                *_neutralised(repo, env),
                "-C",
                str(repo),
                *args,
            ]
            res = subprocess.run(
                cmd, env=env, capture_output=True, text=not binary and stdin is None, timeout=300, input=stdin
            )
        except FileNotFoundError:
            raise GitError("git is not installed", "run ./setup.sh") from None
    if check and res.returncode != 0:
        err = res.stderr if isinstance(res.stderr, str) else res.stderr.decode(errors="replace")
        raise GitError(
            f"git {' '.join(args[:2])} failed in {repo}: {err.strip().splitlines()[-1] if err.strip() else res.returncode}",
            "check that the path is a git repository with at least one commit",
        )
    return res


def toplevel(repo: str | Path) -> Path:
    return Path(git(repo, "rev-parse", "--show-toplevel").stdout.strip()).resolve()


# -- export --------------------------------------------------------------------------------------------------------


def _safe_path(raw: bytes) -> PurePosixPath:
    """A tree path that can be written under the export and means one thing: no '..', no '.git', no control
    characters, no absolute or empty component."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GitError(f"the commit holds a file name that is not UTF-8: {raw[:80]!r}", "rename it") from None
    from airlock.hashing import NAME_RULE, name_problem

    if name_problem(text) or any(p.lower() == ".git" for p in text.split("/")):
        raise GitError(
            f"the commit holds a path that cannot be exported safely: {text[:80]!r}",
            f"rename it ({NAME_RULE}, no '.git')",
        )
    return PurePosixPath(text)


def _blob_id(data: bytes, algo: str) -> str:
    h = hashlib.new(algo)
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def export_commit(repo: str | Path, sha: str, dest: Path) -> int:
    """Write the tree of exactly ``sha`` into ``dest`` (a new directory), running no filter, hook or attribute;
    every blob's bytes are checked against the blob id the tree names. Returns the number of files written."""
    listing = git(repo, "ls-tree", "-r", "-z", "--full-tree", "--end-of-options", sha, binary=True).stdout
    entries: list[tuple[str, str, PurePosixPath]] = []
    for rec in listing.split(b"\0"):
        if not rec:
            continue
        meta, _, path = rec.partition(b"\t")
        mode, kind, oid = meta.decode().split()
        if kind == "commit":
            raise GitError(
                f"commit {sha[:12]} holds a submodule at {path.decode(errors='replace')}: Airlock exports "
                "only the commit's own files",
                "vendor the submodule's files into the training repository",
            )
        entries.append((mode, oid, _safe_path(path)))
    dest.mkdir(parents=True, exist_ok=False)
    root = dest.resolve()
    algo = "sha1" if entries and len(entries[0][1]) == 40 else "sha256"
    with tempfile.TemporaryDirectory(prefix="airlock-gnupg-") as empty:
        env = isolated_env(Path(empty))
        proc = subprocess.Popen(
            ["git", *pinned_config(), *_neutralised(repo, env), "-C", str(repo), "cat-file", "--batch"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for mode, oid, rel in entries:
                proc.stdin.write(oid.encode() + b"\n")
                proc.stdin.flush()
                header = proc.stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise GitError(f"git could not read blob {oid[:12]} ({rel})", "check the repository (git fsck)")
                data = proc.stdout.read(int(header[2]))
                proc.stdout.read(1)
                # Altered object store (a replaced loose object, a doctored pack): the bytes must be the blob id.
                if _blob_id(data, algo) != oid:
                    raise GitError(
                        f"blob {oid[:12]} ({rel}) does not hash to its id",
                        "the repository's object store was altered: re-clone it and run git fsck",
                    )
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if mode == "120000":
                    link = os.path.normpath(os.path.join(os.path.dirname(str(rel)), data.decode(errors="replace")))
                    if os.path.isabs(data.decode(errors="replace")) or link.startswith(".."):
                        raise GitError(f"{rel} is a symlink out of the repository ({data[:80]!r})", "remove it")
                    os.symlink(data, target)
                    continue
                fd = os.open(
                    target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if mode == "100755" else 0o644
                )
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                if not target.resolve().is_relative_to(root):
                    raise GitError(f"{rel} escapes the export", "remove the link in its path")
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
    for dirpath, _dirs, _ in os.walk(dest):
        os.chmod(dirpath, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return len(entries)
