"""The sandbox every piece of team code runs in: the trainer, the model definition, the backdoor stand-in's training.

Security rules (what holds for code inside, with ``mode = "bubblewrap"``, the default):

* It reads nothing it was not given. The filesystem is empty but for read-only binds of ``/usr`` (the OS), the
  Python environment (``sys.prefix`` and friends, never Airlock's own source checkout) and what the job names
  (``ro=``: the code export, the verified data snapshot); it writes only the directories the job names (``rw=``:
  its output) and a private ``/tmp``. The policy, every key, the trust files and their run copies, the registry,
  the ledger, the Prefect home and the training repository's ``.git`` are simply not there. :meth:`Job.refuse_exposure`
  proves, before the start, that none of them lies under a bind.
* It knows no secret. The environment is built from an allowlist (never scrubbed from a blocklist), and the
  sandbox has its own PID namespace with a fresh ``/proc``: the parent's ``/proc/<pid>/environ`` does not exist.
* It reaches no one. Its own network namespace holds only a loopback device: no host service, not even on
  127.0.0.1, no metadata endpoint, no exfiltration.
* It leaves nothing behind. When the job's main process exits, the PID namespace ends and the kernel kills every
  process it started (daemons, double forks); ``--die-with-parent`` ends it if Airlock dies first.
* It is bounded. Wall time (the whole process group is killed), memory (RLIMIT_DATA per process) and output bytes
  (RLIMIT_FSIZE per file plus a watcher on the output directories' total) are capped; exceeding a cap is a refusal.

What it does not guarantee: protection from a kernel exploit (namespaces share the host kernel; run the pipeline
on a dedicated node), from root on the host, or from a model that behaves differently when it is evaluated than
when it serves (the oracle answers for the model; see :mod:`airlock.oracle`). Memory is capped per process, not in
aggregate; on Kubernetes the pod's limits add the aggregate cap.

``mode = "environment"`` is for a host that is itself the sandbox (a Kubernetes pod with no secret mounted, no
service-account token, a default-deny NetworkPolicy: templates/README.md). Then the job runs directly, with the
same allowlisted environment, time, memory and output caps, and the choice is recorded in the signed provenance and
the AIBOM and shown to approvers as a warning. Where bubblewrap cannot start and the policy does not say so, the run
refuses (fail closed).
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import SandboxError
from airlock.policy import Policy

MODES = ("bubblewrap", "environment")
# Variables a child may inherit. Everything else (tokens, keys, agent sockets, API URLs) is dropped.
ALLOWED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
INSIDE = "/airlock"  # where a job's binds appear in the sandbox: /airlock/<name>
_OS_DIRS = ("/usr",)
_OS_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")
_AIRLOCK_ROOT = Path(__file__).resolve().parents[1]


def _prlimit() -> str:
    exe = shutil.which("prlimit")
    if exe is None:
        raise SandboxError(
            "prlimit (util-linux) is not installed, so team code cannot be run with its memory and output caps",
            "install util-linux (apt-get install util-linux)",
        )
    return exe


@dataclass(frozen=True)
class Sandbox:
    mode: str = "bubblewrap"
    bwrap: str = "bwrap"
    memory_mb: int = 8192
    output_mb: int = 2048
    # The trainer's locked environment (airlock/trainer_env.py), if the policy names a lock: its interpreter runs team
    # code, and Airlock's own packages are hidden. Empty: Airlock's interpreter and packages, read-only.
    env: str = ""

    @classmethod
    def from_policy(cls, pol: Policy) -> Sandbox:
        s = pol.sandbox
        return cls(mode=s.mode, bwrap=s.bubblewrap, memory_mb=s.memory_mb, output_mb=s.output_mb)

    @property
    def isolated(self) -> bool:
        return self.mode == "bubblewrap"

    def check(self) -> None:
        """Fail closed: refuse in one line when bubblewrap cannot start a sandbox here."""
        if self.mode not in MODES:
            raise SandboxError(f"unknown sandbox.mode {self.mode!r}", f"use one of {', '.join(MODES)}")
        _prlimit()  # the caps apply in both modes
        if not self.isolated:
            return
        exe = shutil.which(self.bwrap)
        if exe is None:
            raise SandboxError(
                f"bubblewrap ({self.bwrap}) is not installed, so team code cannot be sandboxed",
                "install it (apt-get install bubblewrap; ./setup.sh does) — or, only where the pod "
                'itself is the sandbox, set sandbox.mode = "environment" in airlock.toml',
            )
        probe = self.job("sandbox probe", timeout=60)
        try:
            probe.run([sys.executable, "-I", "-c", "pass"])
        except SandboxError as e:
            raise SandboxError(
                f"bubblewrap cannot start a sandbox here: {e.what}",
                "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run "
                "as root — or, only where the pod itself is the sandbox, set sandbox.mode = "
                '"environment" in airlock.toml',
            ) from None

    def describe(self) -> dict:
        """What the provenance, the AIBOM and the approvers are told about where team code ran."""
        if self.isolated:
            return {
                "mode": "bubblewrap",
                "isolated": True,
                "memory_mb": self.memory_mb,
                "output_mb": self.output_mb,
                "guarantees": "own user, PID, network, IPC and UTS namespaces; read-only OS and Python; no "
                "policy, key, trust file, registry, ledger or .git visible; allowlisted environment",
            }
        return {
            "mode": "environment",
            "isolated": False,
            "memory_mb": self.memory_mb,
            "output_mb": self.output_mb,
            "warning": "team code ran without Airlock's sandbox: the policy declares the environment (e.g. a pod "
            "with no secrets) to be the sandbox",
        }

    def refuse_exposure(self, what: str, binds: list[Path], protected: dict[str, Path | None]) -> None:
        """Fail closed when a secret or trust root lies under a bind that team code will see (a misconfigured
        layout, e.g. the registry inside the run directory, or a key inside the Python environment)."""
        paths = [Path(p).resolve() for p in binds]
        if self.isolated or self.env:
            paths += [Path(p).resolve() for p in self.python_dirs()]
        for label, p in protected.items():
            if p is None:
                continue
            rp = Path(p).resolve()
            for b in paths:
                if rp == b or b in rp.parents:
                    raise SandboxError(
                        f"{label} {p} would be visible to the {what} (it lies under {b})",
                        "move it out of the run, data and Python directories",
                    )

    @property
    def python(self) -> str:
        """The interpreter that runs team code (``{python}`` in a command)."""
        return str(Path(self.env) / "bin" / "python") if self.env else sys.executable

    def python_dirs(self) -> list[str]:
        """What the sandbox binds read-only for Python: the locked environment and the base interpreter's prefix
        (its standard library), or Airlock's own environment when no lock is used."""
        if not self.env:
            return _python_dirs()
        return [os.path.realpath(self.env), os.path.realpath(sys.base_prefix)]

    def hidden_dirs(self) -> list[str]:
        """Airlock's own packages, covered by an empty directory in a sandbox with a locked environment: what team
        code imports comes from the lock, or not at all."""
        if not self.env:
            return []
        base = Path(os.path.realpath(sys.base_prefix))
        sites = {*site.getsitepackages(), site.getusersitepackages()}
        return sorted(
            str(p) for p in map(lambda x: Path(os.path.realpath(x)), sites) if base in p.parents and p.is_dir()
        )

    def job(
        self,
        what: str,
        *,
        ro: dict[str, Path] | None = None,
        rw: dict[str, Path] | None = None,
        cwd: str | None = None,
        timeout: float = 1800,
        threads: int = 1,
    ) -> Job:
        return Job(self, what, dict(ro or {}), dict(rw or {}), cwd, timeout, threads)


@dataclass
class Job:
    """One run of team code: what it may read (``ro``), write (``rw``), where it starts, how long it may take."""

    sandbox: Sandbox
    what: str
    ro: dict[str, Path]
    rw: dict[str, Path]
    cwd: str | None
    timeout: float
    threads: int
    env_extra: dict[str, str] = field(default_factory=dict)
    host_cwd: Path | None = None  # environment mode only: start here instead of at a bind

    def path(self, name: str) -> str:
        """The path a bind has for the code inside (pass this, not the host path, on its command line)."""
        host = self.ro.get(name) or self.rw.get(name)
        if host is None:
            raise KeyError(name)
        return f"{INSIDE}/{name}" if self.sandbox.isolated else str(host)

    def refuse_exposure(self, protected: dict[str, Path | None]) -> None:
        """See :meth:`Sandbox.refuse_exposure`, for this job's binds."""
        self.sandbox.refuse_exposure(self.what, [*self.ro.values(), *self.rw.values()], protected)

    # -- running -----------------------------------------------------------------------------------------------

    def _env(self, home: str) -> dict[str, str]:
        """The child's whole environment; ``home`` is its HOME and TMPDIR (``/tmp/home`` inside the sandbox)."""
        env = {k: os.environ[k] for k in ALLOWED_ENV if k in os.environ}
        py_bin = str(Path(sys.executable).parent)
        t = str(self.threads)
        tmp = "/tmp" if self.sandbox.isolated else home
        env.update(
            {
                "PATH": f"{py_bin}:/usr/local/bin:/usr/bin:/bin",
                "HOME": home,
                "TMPDIR": tmp,
                "USER": "sandbox",
                "LOGNAME": "sandbox",
                "PYTHONNOUSERSITE": "1",
                "PYTHONHASHSEED": "0",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": t,
                "MKL_NUM_THREADS": t,
                "OPENBLAS_NUM_THREADS": t,
                "TQDM_DISABLE": "1",
                "MPLBACKEND": "Agg",
            }
        )
        env.update(self.env_extra)
        return env

    def argv(self, cmd: list[str]) -> list[str]:
        """The command line: ``prlimit`` sets the caps (memory per process, output, no core dumps) and executes
        bubblewrap (or, in environment mode, the command itself), which everything started inherits. Not a
        ``preexec_fn``: that runs Python in the forked child, which can deadlock when other threads spawn too."""
        mem, out = self.sandbox.memory_mb << 20, self.sandbox.output_mb << 20
        caps = [_prlimit(), f"--data={mem}", f"--fsize={out}", "--core=0", "--"]
        return [*caps, *self._inner(cmd)]

    def _inner(self, cmd: list[str]) -> list[str]:
        cmd = [self.sandbox.python if c == "{python}" else c for c in cmd]
        if not self.sandbox.isolated:
            return cmd
        args = [
            self.sandbox.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--hostname",
            "airlock-sandbox",
        ]
        for d in _OS_DIRS:
            args += ["--ro-bind", d, d]
        for link, target in _OS_LINKS.items():
            if os.path.islink(link) or not os.path.exists(link):
                args += ["--symlink", target, link]
            else:
                args += ["--ro-bind", link, link]
        for f in _ETC:
            if os.path.exists(f):
                args += ["--ro-bind", f, f]
        # A private /tmp in memory, capped like the output; the sandbox's own root is read-only once set up.
        args += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(self.sandbox.output_mb << 20),
            "--tmpfs",
            "/tmp",
            "--dir",
            "/tmp/home",
        ]
        # Python after the private /tmp, so that an environment kept under /tmp is not covered by it.
        for d in self.sandbox.python_dirs():
            args += ["--ro-bind", d, d]
        for d in self.sandbox.hidden_dirs():
            args += ["--tmpfs", d]
        for name, host in self.ro.items():
            args += ["--ro-bind", str(Path(host).resolve()), f"{INSIDE}/{name}"]
        for name, host in self.rw.items():
            args += ["--bind", str(Path(host).resolve()), f"{INSIDE}/{name}"]
        args += ["--remount-ro", "/", "--chdir", self.path(self.cwd) if self.cwd else "/tmp"]
        return [*args, "--", *cmd]

    def _cwd(self) -> str:
        if self.sandbox.isolated:
            return "/"  # bwrap's --chdir sets the directory inside
        if self.host_cwd is not None:
            return str(self.host_cwd)
        return str(self.ro.get(self.cwd) or self.rw.get(self.cwd) or "/") if self.cwd else "/"

    def _home(self) -> tuple[str, tempfile.TemporaryDirectory | None]:
        """Inside the sandbox a private /tmp/home; without it a new empty directory, removed afterwards."""
        if self.sandbox.isolated:
            return "/tmp/home", None
        if "HOME" in self.env_extra:
            return self.env_extra["HOME"], None
        tmp = tempfile.TemporaryDirectory(prefix="airlock-home-")
        return tmp.name, tmp

    def spawn(self, cmd: list[str]) -> subprocess.Popen:
        """Start the job with binary pipes on stdin/stdout (the oracle's protocol); stderr is the caller's."""
        for d in self.rw.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        home, keep = self._home()
        try:
            proc = subprocess.Popen(
                self.argv(cmd),
                cwd=self._cwd(),
                env=self._env(home),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise SandboxError(f"cannot start the {self.what}: {e.strerror}", "check sandbox.bubblewrap") from None
        proc.airlock_home = keep  # type: ignore[attr-defined]  # removed with the process object
        return proc

    def run(
        self,
        cmd: list[str],
        on_line: Callable[[str], None] | None = None,
        stdin: int | None = None,
        on_start: Callable[[subprocess.Popen], None] | None = None,
    ) -> float:
        """Run cmd to completion; stream its output to on_line. Raises SandboxError on a non-zero exit, a timeout,
        or a broken cap. Returns the seconds it took. ``stdin`` is a file descriptor to read from (default: none);
        ``on_start`` is given the process as soon as it runs (to end it from elsewhere)."""
        for d in self.rw.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        home, keep = self._home()
        try:
            return self._run(cmd, home, on_line, stdin, on_start)
        finally:
            if keep is not None:
                keep.cleanup()

    def _run(
        self,
        cmd: list[str],
        home: str,
        on_line: Callable[[str], None] | None,
        stdin: int | None = None,
        on_start: Callable[[subprocess.Popen], None] | None = None,
    ) -> float:
        start = time.monotonic()
        tail: deque[str] = deque(maxlen=20)
        try:
            proc = subprocess.Popen(
                self.argv(cmd),
                cwd=self._cwd(),
                env=self._env(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as e:
            raise SandboxError(
                f"cannot start the {self.what} ({cmd[0]}): {e.strerror}",
                "check training.command and sandbox.bubblewrap in airlock.toml",
            ) from None
        if on_start is not None:
            on_start(proc)
        stopped: list[str] = []

        def kill(why: str) -> None:
            stopped.append(why)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: grandchildren hold the pipe too
            except ProcessLookupError:
                pass

        # A silent hang prints no line to check the clock on: a timer stops it.
        timer = threading.Timer(self.timeout, kill, args=("timeout",))
        timer.start()
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_output, args=(done, kill), daemon=True)
        watcher.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if on_line:
                    on_line(line)
            proc.wait()
        finally:
            timer.cancel()
            done.set()
            watcher.join()
            if not self.sandbox.isolated:  # no PID namespace to end them: whatever is left of its group goes
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        refusal = self.refusal(stopped, proc.returncode, list(tail))
        if refusal is not None:
            raise refusal
        return time.monotonic() - start

    def refusal(self, stopped: list[str], code: int, tail: list[str]) -> SandboxError | None:
        """What ended a run of this job, as a refusal (None: it ran to a clean exit). ``stopped``: why it was
        killed ("output", "timeout"); ``tail``: its last lines of output."""
        limit_mb = self.sandbox.output_mb
        if (
            "output" in stopped
            or self._output_bytes() > limit_mb << 20
            or any("File too large" in line for line in tail)
        ):
            return SandboxError(
                f"the {self.what} wrote more than its {limit_mb} MB output cap and was stopped",
                "write less, or raise sandbox.output_mb in airlock.toml",
            )
        if "timeout" in stopped:
            return SandboxError(
                f"the {self.what} ran longer than {self.timeout:g} s and was stopped",
                "raise training.timeout_seconds in airlock.toml or make it faster",
            )
        if code != 0:
            last = next((line for line in reversed(tail) if line.strip()), "no output").strip()[:200]
            if any("MemoryError" in line or "Cannot allocate memory" in line for line in tail):
                return SandboxError(
                    f"the {self.what} ran out of its {self.sandbox.memory_mb} MB memory cap: {last}",
                    "use less memory, or raise sandbox.memory_mb in airlock.toml",
                )
            return SandboxError(
                f"the {self.what} exited with code {code}: {last}", "run it by hand from a clean checkout to debug"
            )
        return None

    def _output_bytes(self) -> int:
        total = 0
        for d in self.rw.values():
            for dirpath, _, files in os.walk(d):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                    except OSError:
                        pass
        return total

    def _watch_output(self, done: threading.Event, kill: Callable[[str], None]) -> None:
        limit = self.sandbox.output_mb << 20
        while not done.wait(0.5):
            if self._output_bytes() > limit:
                kill("output")
                return


def _python_dirs() -> list[str]:
    """The Python environment the sandbox needs, read-only: the interpreter's prefixes and any site directory
    outside them, except Airlock's own source checkout (an editable install) and anything under /usr (bound)."""
    dirs: list[str] = []
    cands = [
        sys.base_prefix,
        sys.prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(os.path.realpath(sys.executable)).parent.parent),
    ]
    cands += [p for p in sys.path if p and os.path.isdir(p)]
    for c in cands:
        p = Path(os.path.realpath(c))
        if p == Path("/") or p == _AIRLOCK_ROOT or _AIRLOCK_ROOT in p.parents or p in _AIRLOCK_ROOT.parents:
            continue
        if any(Path(d) == p or Path(d) in p.parents for d in (*_OS_DIRS, *dirs)):
            continue
        dirs = [d for d in dirs if p not in Path(d).parents]
        dirs.append(str(p))
    return dirs


class TrustedProcess:
    """Airlock's own code (never team code) in a child with the sandbox's allowlisted environment and caps but no
    namespace - the model-gate evaluator, which starts its own sandboxes for the team's model - started now and
    waited for later. It works beside the caller, which hands it one line on its standard input when what it waits
    for is ready (the evaluator, started beside the training, is given the candidate once it is built).

    Leaving the ``with`` block without :meth:`wait` (the caller failed first) closes that input unsent, which tells
    the process to end, and kills its process group if it has not within ``grace`` seconds: nothing it started
    outlives the run. Its output lines go to ``on_line`` from a thread of this class's own, in the context (Prefect's
    run included) of the code that started it."""

    def __init__(
        self,
        cmd: list[str],
        cwd: Path,
        home: Path,
        timeout: float,
        what: str,
        threads: int = 1,
        on_line: Callable[[str], None] | None = None,
        grace: float = 10.0,
    ) -> None:
        import contextvars

        self.what, self.grace = what, grace
        job = Sandbox(mode="environment").job(what, rw={"home": home}, timeout=timeout, threads=threads)
        job.host_cwd = cwd
        job.env_extra = {"HOME": str(home), "TMPDIR": str(home)}
        self._proc: subprocess.Popen | None = None
        self._error: BaseException | None = None
        self._seconds = 0.0
        read, write = os.pipe()
        self._write: int | None = write
        self._read: int | None = read
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._main, job, cmd, on_line), name=what, daemon=True
        )
        self._thread.start()

    def _main(self, job: Job, cmd: list[str], on_line: Callable[[str], None] | None) -> None:
        try:
            self._seconds = job.run(cmd, on_line, stdin=self._read, on_start=self._started)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits (wait() raises it)
            self._error = e
        finally:
            self._close_read()

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        self._close_read()  # the child holds its own copy: its input ends when ours is closed

    def _close_read(self) -> None:
        if self._read is not None:
            os.close(self._read)
            self._read = None

    def send(self, line: str) -> None:
        """Give the process its one line (then its input ends)."""
        if self._write is None:
            raise SandboxError(f"the {self.what} was already given its input", "this is a bug in Airlock")
        try:
            os.write(self._write, (line.rstrip("\n") + "\n").encode())
        except BrokenPipeError:
            pass  # it ended already: wait() says why
        finally:
            self._close_write()

    def _close_write(self) -> None:
        if self._write is not None:
            os.close(self._write)
            self._write = None

    def wait(self) -> float:
        """Wait for the end; raises what :meth:`Job.run` would (non-zero exit, timeout, broken cap)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._seconds

    def abandon(self) -> None:
        """End it without its input: it is told (its input closes), then killed if it lingers."""
        self._close_write()
        self._thread.join(self.grace)
        if self._thread.is_alive() and self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._thread.join()

    def __enter__(self) -> TrustedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.abandon()
