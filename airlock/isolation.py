"""Run the team's code (trainer, model definition) in a subprocess that holds no secrets.

The environment is built from an allowlist, not scrubbed from a blocklist: a token under a name nobody thought of
(``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, ``SSH_AUTH_SOCK``, ``PREFECT_API_KEY``, ``AWS_*``, ``AIRLOCK_SIGNING_KEY``...)
never reaches the child. HOME points at an empty directory of the run, so ``~/.ssh`` and ``~/.prefect`` are not
where the child looks. Key *files* are still readable by path for a child running as the same OS user: on shared
machines run training as another user or in its own pod (templates/k8s mounts no secret into training pods).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from airlock.errors import AirlockError

ALLOWED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class IsolatedRunError(AirlockError):
    exit_code = 1


def clean_env(home: Path, threads: int = 1) -> dict[str, str]:
    env = {k: os.environ[k] for k in ALLOWED_ENV if k in os.environ}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home), "TMPDIR": str(home), "PYTHONNOUSERSITE": "1", "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
        "TQDM_DISABLE": "1",
    })
    return env


def run(cmd: list[str], cwd: Path, home: Path, timeout: int, what: str, threads: int = 1,
        on_line: Callable[[str], None] | None = None) -> float:
    """Run cmd; stream its output to on_line; raise IsolatedRunError on non-zero exit or timeout. Returns seconds."""
    cmd = [sys.executable if c == "{python}" else c for c in cmd]
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(home, threads), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        raise IsolatedRunError(f"cannot start the {what} ({cmd[0]}): {e.strerror}", "check training.command in airlock.toml") from None
    timed_out = threading.Event()

    def _kill() -> None:     # a silent hang produces no line to check the clock on: a timer stops it
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the whole process group: grandchildren hold the pipe too
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, _kill)
    timer.start()
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
    if timed_out.is_set():
        raise IsolatedRunError(f"the {what} ran longer than {timeout} s and was stopped",
                               "raise training.timeout_seconds in airlock.toml or make it faster")
    if proc.returncode != 0:
        last = next((l for l in reversed(tail) if l.strip()), "no output")
        raise IsolatedRunError(f"the {what} exited with code {proc.returncode}: {last.strip()[:200]}",
                               "run it by hand from a clean checkout to debug")
    return time.monotonic() - start
