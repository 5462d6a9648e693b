"""One local Prefect server for a run and everyone who approves it: ``python -m flows._server --prepare``.

Without ``PREFECT_API_URL`` Prefect starts a temporary server inside every process that talks to it: the demo's
flow, then again each approver's ``airlock approve`` (~6 s each on 2 cores), and each new ``PREFECT_HOME`` is migrated
from an empty database (116 migrations, ~8 s). The demo instead starts one server at once, in the background while
it builds its keys and repository, and hands its URL to the flow and to the approvers' processes.

A migrated empty database is kept per Prefect version in the user's cache (``./setup.sh`` runs ``--prepare``; else
the first demo leaves it) and copied into each new ``PREFECT_HOME`` with SQLite's backup API. A copy is at head for
this Prefect version (another version has another template), so the server then skips its migration check; without
a copy it migrates from scratch. The database holds orchestration state only; no verdict rests on it (approvals are verified cryptographically by the flow, promotions by the registry).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from airlock.errors import DemoError

DB = "prefect.db"


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def template_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "airlock" / f"prefect-{_prefect_version()}" / DB


def _copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a live or closed SQLite database (never a half-written file: tmp + rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as a, sqlite3.connect(tmp) as b:
        a.backup(b)
    a.close()
    b.close()
    os.replace(tmp, dst)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``prefect server`` (API only, ephemeral services) on 127.0.0.1 for one ``PREFECT_HOME``.

    ``start()`` returns at once; ``wait()`` blocks until ``/api/health`` answers and returns the API URL.
    """

    def __init__(self, home: Path, log: Path | None = None, full: bool = False) -> None:
        self.home = home
        # full: as `prefect server start` serves it - the UI at the server's root and every background service
        # (e.g. the one that fails runs whose pause timed out); else the API with ephemeral services, faster to start.
        self.full = full
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = log or home / "server.log"
        self.proc: subprocess.Popen | None = None
        self.seeded = False

    def start(self) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        template = template_path()
        if template.is_file() and not (self.home / DB).exists():
            try:
                _copy_db(template, self.home / DB)
                self.seeded = True
            except sqlite3.Error:
                (self.home / DB).unlink(missing_ok=True)  # a bad cache costs the migrations, nothing else
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_UI_ENABLED": "1" if self.full else "0",
            "PREFECT_UI_API_URL": self.url,
            **({} if self.full else {"PREFECT__SERVER_EPHEMERAL": "1"}),  # (Prefect then serves no UI)
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "ERROR",
            # Copied from the template this Prefect version migrated (its path names the version): already at head,
            # so the start skips the migration check (~1.3 s on 2 cores). From scratch, the migrations run.
            **({"PREFECT_API_DATABASE_MIGRATE_ON_START": "false"} if self.seeded else {}),
        }
        env.pop("PREFECT_API_URL", None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def wait(self, timeout: float = 180.0) -> str:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"the Prefect server exited with code {self.proc.returncode} before it answered",
                    f"see {self.log}",
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        self._keep_template()
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise DemoError(f"the Prefect server did not answer within {timeout:.0f} s", f"see {self.log}")

    def _keep_template(self) -> None:
        """Right after a migration from scratch (nothing run yet), keep the database for the next PREFECT_HOME."""
        if self.seeded or template_path().exists():
            return
        try:
            _copy_db(self.home / DB, template_path())
        except (sqlite3.Error, OSError):
            pass  # no cache: the next demo migrates again

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def prepare() -> Path:
    """Migrate an empty database once for this Prefect version (``./setup.sh`` calls this)."""
    import tempfile

    if template_path().is_file():
        return template_path()
    with tempfile.TemporaryDirectory(prefix="airlock-prefect-") as d:
        server = Server(Path(d)).start()
        try:
            server.wait()
        finally:
            server.stop()
    return template_path()


if __name__ == "__main__":
    if sys.argv[1:] != ["--prepare"]:
        print("usage: python -m flows._server --prepare", file=sys.stderr)
        sys.exit(2)
    print(f"Prefect database template: {prepare()}")
