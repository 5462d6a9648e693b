"""Many runs of one ``python -m MODULE`` trainer in one sandbox, each a fork of a process that imported its
dependencies once (the golden stand-in's trainings: gates/backdoor.py).

A new sandboxed interpreter per training pays for importing torch and shutting it down again (about 3 s a run on
2 cores, against 1-2 s of training for a stand-in model). :class:`ForkTrainer` starts one sandboxed process
(airlock/_fork_server.py) that imports the modules outside the commit's export that the trainer's file imports, then
forks one child per training that runs the module as ``__main__``, as ``python -m`` would.

Security rules, the same as for any training (airlock/sandbox.py):
- The server and its children are team code: one sandbox, the job's binds, caps and allowlisted environment. They
  may share one sandbox because they are the same commit's trainer: a child that tampers with another seed's output
  can do no more than a trainer that trains what it likes, and every model is judged here afterwards.
- Nothing it says is believed beyond "this training ended with this code": the clock, the output cap and the
  refusals are kept here, and a run that does not answer in time kills the whole process group.
- Fail closed: a server that cannot start, dies, or answers something unreadable is a :class:`SandboxError`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from airlock import _fork_server as _server
from airlock.errors import SandboxError
from airlock.sandbox import Job

SERVER = Path(_server.__file__)
MAX_LINE = 1 << 16


def forkable(command: list[str]) -> str | None:
    """The module of a ``{python} -m MODULE`` training command (the only form a fork trainer stands for), or None."""
    if len(command) == 3 and command[:2] == ["{python}", "-m"] and all(p.isidentifier() for p in command[2].split(".")):
        return command[2]
    return None


class ForkTrainer:
    """One sandboxed fork server for ``python -m module``; :meth:`run` is one training (thread-safe)."""

    def __init__(self, job: Job, module: str) -> None:
        job.ro.setdefault("fork.py", SERVER)
        self.job, self.module = job, module
        self._lock = threading.Lock()
        self._answers: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition(self._lock)
        self._next = 0
        self._dead: str | None = None  # what became of the server, once it can answer no more
        self._stopped: str | None = None  # why this side killed it ("timeout", "output", "closed")
        self._errors: list[str] = []
        self.preloaded: list[str] = []
        self._done = threading.Event()
        self.proc = job.spawn(["{python}", "-P", job.path("fork.py"), module])
        self._watches = [threading.Thread(target=w, daemon=True) for w in (self._read_errors, self._read_answers)]
        # The output cap, watched as Job.run watches it: the same check of the job's writable binds.
        self._watches.append(threading.Thread(target=job._watch_output, args=(self._done, self._kill), daemon=True))
        for watch in self._watches:
            watch.start()

    # -- the server's output ------------------------------------------------------------------------------------

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            self._errors = (self._errors + [raw.decode(errors="replace").rstrip("\n")])[-20:]

    def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(lambda: self.proc.stdout.readline(MAX_LINE), b""):  # type: ignore[union-attr]
            try:
                answer = json.loads(raw)
                ident = answer.get("id") if isinstance(answer, dict) else None
                if ident is not None and (not isinstance(ident, int) or not isinstance(answer.get("code"), int)):
                    raise ValueError(answer)
            except ValueError:
                self._fail("sent an unreadable answer")
                return
            if ident is None and isinstance(answer, dict) and isinstance(answer.get("ready"), list):
                self.preloaded = [str(m) for m in answer["ready"]]  # for the record: what it imported before forking
            if ident is not None:
                with self._lock:
                    self._answers[ident] = answer
                    self._arrived.notify_all()
        self._fail(f"exited (code {self.proc.wait()})")

    def _fail(self, what: str) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = what
            self._arrived.notify_all()

    def _kill(self, why: str) -> None:
        self._stopped = self._stopped or why
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and every child: one process group
        except (ProcessLookupError, PermissionError):
            pass

    # -- one training -------------------------------------------------------------------------------------------

    def run(self, argv: list[str]) -> float:
        """One ``python -m module ARGV`` in the sandbox; raises SandboxError as :meth:`Job.run` would."""
        start = time.monotonic()
        deadline = start + self.job.timeout
        with self._lock:
            ident, self._next = self._next, self._next + 1
            if self._dead is None:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(json.dumps({"id": ident, "argv": argv}).encode() + b"\n")
                    self.proc.stdin.flush()
                except OSError:
                    self._dead = "closed its input"
            while ident not in self._answers and self._dead is None and self._stopped is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(min(left, 1.0))
            answer = self._answers.pop(ident, None)
        if answer is None and (self._stopped == "output" or (self._stopped is None and time.monotonic() >= deadline)):
            if self._stopped is None:
                self._kill("timeout")  # the server and every training in it: it is not believed to stop one
            refusal = self.job.refusal([self._stopped or "timeout"], 1, [])
            assert refusal is not None  # a stop is always a refusal
            raise refusal
        if answer is None:
            last = next((line for line in reversed(self._errors) if line.strip()), "no output").strip()[:200]
            raise SandboxError(
                f"the {self.job.what}'s fork server {self._dead or 'was stopped'}: {last}",
                "run the trainer by hand from a clean checkout, or set training.fork = false in airlock.toml",
            )
        tail = answer.get("tail")
        refusal = self.job.refusal([], answer["code"], [str(t) for t in tail] if isinstance(tail, list) else [])
        if refusal is not None:
            raise refusal
        return time.monotonic() - start

    # -- the end ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """End the server: no more trainings; any still running is killed with it."""
        self._done.set()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        self._kill("closed")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # The server's stderr ends once it and every child holding it have gone (the PID namespace ends with the
        # sandbox): returning later than that would leave a training running that nobody waits for.
        for watch in self._watches[:2]:
            watch.join(timeout=10)

    def __enter__(self) -> ForkTrainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
