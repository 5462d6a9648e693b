"""Run git with a configuration nobody under test can change.

A repository's own ``.git/config`` is attacker-controlled: it can point ``gpg.ssh.program`` at a script that claims
any signature is good, add its own ``gpg.ssh.allowedSignersFile``, or set ``core.fsmonitor`` to run a command on
``git status``. Every call here therefore runs with ``GIT_CONFIG_GLOBAL=/dev/null`` and ``GIT_CONFIG_NOSYSTEM=1``
and pins each security-relevant key on the command line, which overrides repository config.

GitPython is deliberately not used for these calls: its high-level API reads repository config.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from airlock.errors import AirlockError


class GitError(AirlockError):
    pass


def pinned_config(allowed_signers: Path | None = None, revoked_keys: Path | None = None) -> list[str]:
    cfg = {
        "gpg.format": "ssh",
        "gpg.ssh.program": "ssh-keygen",
        "gpg.program": "gpg",
        "gpg.ssh.allowedSignersFile": str(allowed_signers) if allowed_signers else "/dev/null",
        "gpg.ssh.revocationFile": str(revoked_keys) if revoked_keys else "/dev/null",
        "gpg.minTrustLevel": "fully",
        "core.fsmonitor": "false",
        "core.hooksPath": "/dev/null",
        "core.sshCommand": "false",
        "safe.directory": "*",
        "log.showSignature": "false",
    }
    args: list[str] = []
    for k, v in cfg.items():
        args += ["-c", f"{k}={v}"]
    return args


def isolated_env(gnupg_home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "GNUPGHOME"}
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    if gnupg_home is not None:
        env["GNUPGHOME"] = str(gnupg_home)
    return env


def git(repo: str | Path, *args: str, allowed_signers: Path | None = None, revoked_keys: Path | None = None,
        gnupg_home: Path | None = None, check: bool = True, binary: bool = False) -> subprocess.CompletedProcess:
    """Run git with pinned config. Signature checks use only the given trust roots: the allowed signers, the
    revocation file and a dedicated GnuPG home (never the user's ~/.gnupg: without one, an empty home is used)."""
    cmd = ["git", *pinned_config(allowed_signers, revoked_keys), "-C", str(repo), *args]
    with tempfile.TemporaryDirectory(prefix="airlock-gnupg-") as empty:
        home = gnupg_home if gnupg_home is not None else Path(empty)
        try:
            res = subprocess.run(cmd, env=isolated_env(home), capture_output=True, text=not binary, timeout=300)
        except FileNotFoundError:
            raise GitError("git is not installed", "run ./setup.sh") from None
    if check and res.returncode != 0:
        err = res.stderr if isinstance(res.stderr, str) else res.stderr.decode(errors="replace")
        raise GitError(f"git {' '.join(args[:2])} failed in {repo}: {err.strip().splitlines()[-1] if err.strip() else res.returncode}",
                       "check that the path is a git repository with at least one commit")
    return res


def toplevel(repo: str | Path) -> Path:
    return Path(git(repo, "rev-parse", "--show-toplevel").stdout.strip()).resolve()


def export_commit(repo: str | Path, sha: str, dest: Path) -> None:
    """Write the tree of exactly `sha` (not the working tree) into dest: training runs what was verified."""
    import io
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    data = git(repo, "archive", "--format=tar", sha, binary=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
