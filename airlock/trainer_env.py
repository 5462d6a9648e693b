"""The trainer's Python environment, installed from the training repository's lock file with hashes.

The lock (``training.lock`` in the policy, a path inside the verified commit) lists every package the team's code
imports - the trainer and the model code the oracle loads - each pinned to one version with the sha256 of its
wheel, as ``pip-compile --generate-hashes`` and ``uv pip compile --generate-hashes`` write them. Airlock installs it
into a fresh virtual environment with ``pip --require-hashes --no-deps --only-binary=:all:``, once per lock digest,
and every sandbox that runs team code uses that interpreter, with Airlock's own packages hidden.

Security rules:
* A dependency swapped on the index (or in a cache, or a mirror) fails the install: pip checks each wheel against
  the lock's hash before unpacking it, and a requirement without a hash is refused (``--require-hashes``).
* Installing runs no code: wheels only (an sdist would run its build script on this host, outside the sandbox),
  no dependencies beyond the lock, and the lock may hold only ``name==version --hash=sha256:...`` entries: an option
  line (``--index-url``, ``-e``, ``-r``, ``--trusted-host``), a URL, a path or a marker is refused, so the commit
  cannot choose where packages come from.
* The environment is judged again at every use: its tree digest, taken when it was built and kept beside it, is
  recomputed before a sandbox starts (about 0.6 s for torch's 21,000 files); a file changed since is a refusal.
  Inside the bubblewrap sandbox it is mounted read-only, and no process writes bytecode into it.
* The lock's digest and the environment's tree digest go into the signed provenance and the AIBOM, with every
  locked package and its hashes: approvers and ``airlock rebuild`` see exactly what the trainer imported.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from airlock.errors import TrainerEnvError

MARKER = "airlock-env.json"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"[A-Za-z0-9][A-Za-z0-9.+!_-]*"
_REQ = re.compile(rf"^(?P<name>{_NAME})==(?P<version>{_VERSION})$")
_HASH = re.compile(r"^--hash=sha256:(?P<hex>[0-9a-f]{64})$")
MAX_LOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class Locked:
    name: str
    version: str
    hashes: tuple[str, ...]  # sha256 hex of the wheels any one of which may be installed


@dataclass(frozen=True)
class TrainerEnv:
    root: Path
    lock: str  # the lock's path in the commit
    lock_digest: str
    tree_digest: str
    packages: tuple[Locked, ...]
    installed: dict  # name -> {"version", "sha256", "wheel"}: what pip installed (its --report), one of the lock's

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def describe(self) -> dict:
        """For the provenance and the AIBOM (signed with the model)."""
        return {
            "lock": self.lock,
            "lock_digest": self.lock_digest,
            "tree_digest": self.tree_digest,
            "python": ".".join(map(str, sys.version_info[:3])),
            "packages": [
                {
                    "name": p.name,
                    "version": p.version,
                    "sha256": (self.installed.get(p.name) or {}).get("sha256", ""),
                    "wheel": (self.installed.get(p.name) or {}).get("wheel", ""),
                    "allowed_sha256": list(p.hashes),
                }
                for p in self.packages
            ],
        }


def parse(text: str, where: str = "the lock") -> tuple[Locked, ...]:
    """The lock's entries, or TrainerEnvError naming the first line that is not ``name==version --hash=...``."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        entry = (pending + line).strip()
        pending = ""
        if entry:
            logical.append((start, entry))
    if pending.strip():
        logical.append((start, pending.strip()))
    out: list[Locked] = []
    seen: set[str] = set()
    for n, entry in logical:
        first, *rest = entry.split()
        m = _REQ.match(first)
        if not m:
            raise TrainerEnvError(
                f"{where}, line {n}: {first[:60]!r} is not a pinned requirement (name==version)",
                "the lock may hold only `name==version --hash=sha256:...` entries (pip-compile --generate-hashes)",
                code="environment.bad_lock",
            )
        hashes = []
        for tok in rest:
            h = _HASH.match(tok)
            if not h:
                raise TrainerEnvError(
                    f"{where}, line {n}: {tok[:60]!r} is not allowed after {first} (only --hash=sha256:<hex>)",
                    "no options, URLs, paths or markers: the commit may not choose where packages come from",
                    code="environment.bad_lock",
                )
            hashes.append(h["hex"])
        if not hashes:
            raise TrainerEnvError(
                f"{where}, line {n}: {first} has no --hash",
                "lock every package with its hash",
                code="environment.bad_lock",
            )
        key = re.sub(r"[-_.]+", "-", m["name"]).lower()
        if key in seen:
            raise TrainerEnvError(
                f"{where}, line {n}: {m['name']} is locked twice",
                "keep one entry per package",
                code="environment.bad_lock",
            )
        seen.add(key)
        out.append(Locked(key, m["version"], tuple(hashes)))
    if not out:
        raise TrainerEnvError(
            f"{where} locks no package",
            "lock what the trainer imports (torch, numpy, ...)",
            code="environment.bad_lock",
        )
    return tuple(out)


def prepare(lock_file: Path, lock_name: str, cache: Path, on_line=None) -> TrainerEnv:
    """The environment for this lock: built once (under a file lock, so concurrent runs build it once), then reused
    after its tree digest is checked again. Raises TrainerEnvError with the reason."""
    import hashlib

    from airlock.hashing import hash_tree

    try:
        raw = lock_file.read_bytes()
    except OSError as e:
        raise TrainerEnvError(
            f"the commit has no lock file {lock_name} ({e.strerror})",
            "commit the lock (pip-compile --generate-hashes) or fix training.lock in airlock.toml",
            code="environment.no_lock",
        ) from None
    if len(raw) > MAX_LOCK_BYTES:
        raise TrainerEnvError(
            f"the lock {lock_name} is over {MAX_LOCK_BYTES >> 10} KiB",
            "is it a lock file?",
            code="environment.bad_lock",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TrainerEnvError(
            f"the lock {lock_name} is not UTF-8 text", "regenerate it", code="environment.bad_lock"
        ) from None
    packages = parse(text, f"the lock {lock_name}")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    home = cache / digest.removeprefix("sha256:")
    say = on_line or (lambda _line: None)
    with open(cache / f".{home.name}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another run building the same lock: wait for it, then reuse
        if not (home / MARKER).is_file():
            installed = _build(raw, packages, home, say)
            say(f"hashing the new environment ({len(packages)} packages)")
            tree = hash_tree(home / "env").root_digest
            record = {"lock_digest": digest, "tree_digest": tree, "installed": installed}
            (home / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    try:
        recorded = json.loads((home / MARKER).read_text())
        expected, installed = recorded["tree_digest"], recorded["installed"]
        if not isinstance(expected, str) or not isinstance(installed, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainerEnvError(
            f"the trainer environment {home} has an unreadable record",
            f"chmod -R u+w {home}; rm -r {home} to rebuild it",
            code="environment.changed",
        ) from None
    # A package edited, added or removed after the install (by hand, or by a process that could write there).
    actual = hash_tree(home / "env").root_digest
    if actual != expected:
        raise TrainerEnvError(
            f"the trainer environment {home} changed since it was built from {lock_name} "
            f"(tree {actual[:19]}…, built as {expected[:19]}…)",
            f"find out who wrote there, then rebuild it: chmod -R u+w {home}; rm -r {home}",
            code="environment.changed",
        )
    return TrainerEnv(home / "env", lock_name, digest, expected, packages, installed)


def _build(raw: bytes, packages: tuple[Locked, ...], home: Path, say) -> dict:
    """Install into ``home`` itself (the caller holds the lock), so that the paths pip and venv write into files are
    the same at every build on this machine. Whatever a failed or killed build left there is removed first."""
    _remove(home)
    ok = False
    try:
        home.mkdir(parents=True)
        say(f"building the trainer environment from the lock ({len(packages)} packages, hashes required)")
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(home / "env")],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (home / "requirements.lock").write_bytes(raw)
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "--python", str(home / "env" / "bin" / "python")),
                *("install", "--require-hashes", "--no-deps", "--only-binary=:all:", "--no-input"),
                *("--disable-pip-version-check", "--no-warn-script-location", "--progress-bar", "off"),
                *("--report", str(home / "install-report.json"), "-r", str(home / "requirements.lock")),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0:
            reason, code = _pip_reason(proc.stderr + proc.stdout)
            raise TrainerEnvError(reason, "fix the lock, or find out who changed the package index", code=code)
        installed = _installed(home / "install-report.json")
        _read_only(home / "env")
        ok = True
        return installed
    except subprocess.TimeoutExpired:
        raise TrainerEnvError(
            "installing the trainer's lock took over an hour",
            "check the package index",
            code="environment.install_failed",
        ) from None
    except subprocess.CalledProcessError as e:
        raise TrainerEnvError(
            f"python -m venv failed: {(e.stderr or b'').decode(errors='replace').strip()[-200:]}",
            "install the interpreter's venv module",
            code="environment.install_failed",
        ) from None
    finally:
        if not ok:
            _remove(home)


def _remove(path: Path) -> None:
    """Delete a (read-only) environment directory."""
    if not path.exists():
        return
    for d, _dirs, _files in os.walk(path):
        Path(d).chmod(0o755)
    shutil.rmtree(path)


def _installed(report: Path) -> dict:
    """Which wheel pip installed for each package (one of the hashes the lock allows), from its ``--report``."""
    try:
        doc = json.loads(report.read_text())
        out = {}
        for item in doc["install"]:
            name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
            info = item["download_info"]
            out[name] = {
                "version": item["metadata"]["version"],
                "sha256": info["archive_info"]["hashes"]["sha256"],
                "wheel": info["url"].rsplit("/", 1)[-1],
            }
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise TrainerEnvError(
            "pip installed the lock but wrote no readable report of what it installed",
            "use pip 23.0 or newer",
            code="environment.install_failed",
        ) from None


def _pip_reason(out: str) -> tuple[str, str]:
    """pip's failure in one line: a hash mismatch names the package and both digests."""
    m = re.search(
        r"^\s*(\S+) from (\S+)(?: \(from [^\n]*\))?:\s*\n\s*Expected sha256 ([0-9a-f]{64})"
        r"(?:\s*\n\s*Or: +[0-9a-f]{64})*\s*\n\s*Got +([0-9a-f]{64})",
        out,
        re.M,
    )
    if m:
        return (
            f"{m[1]} does not match the lock: the wheel {m[2].rsplit('/', 1)[-1]} has sha256 {m[4][:16]}…, "
            f"the lock says {m[3][:16]}…",
            "environment.hash_mismatch",
        )
    errors = [line.strip() for line in out.splitlines() if line.strip().startswith("ERROR:")]
    detail = errors[0] if errors else (out.strip().splitlines() or ["pip failed"])[-1]
    return f"pip could not install the trainer's lock: {detail[:200]}", "environment.install_failed"


def _read_only(root: Path) -> None:
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = Path(d, f)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & 0o555)
    for d, _dirs, _files in os.walk(root, topdown=False):
        Path(d).chmod(0o555)


def default_cache() -> Path:
    """$XDG_CACHE_HOME/airlock/trainer-envs, else ~/.cache/airlock/trainer-envs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airlock" / "trainer-envs"


def main(argv: list[str] | None = None) -> int:
    """``python -m airlock.trainer_env LOCK [CACHE]``: build (or check) the environment for a lock ahead of a run
    (./setup.sh does it for the example trainer, so that the demo and the tests start with it built)."""
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m airlock.trainer_env LOCK [CACHE]", file=sys.stderr)
        return 2
    lock = Path(args[0])
    cache = Path(args[1]) if len(args) > 1 else default_cache()
    try:
        env = prepare(lock, str(lock), cache, on_line=lambda line: print(line, file=sys.stderr))
    except TrainerEnvError as e:
        print(f"airlock: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    print(env.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
