"""What the end-to-end flow tests share: one Prefect test server per module, the demo's work directory with cheap
model-gate settings, and `airlock run` / `airlock approve` as separate processes against that server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from airlock.ledger import Ledger
from gates import approval
from tests.conftest import ROOT


def set_policy(paths, section: str, key: str, value) -> None:
    p = paths["policy"]
    text = p.read_text()
    # Within the section: up to the next line that opens a table (a value may hold brackets: require = {...[...]}).
    text, n = re.subn(
        rf"(\[{re.escape(section)}\](?:(?!\n\[).)*?\n){key} = [^\n]*", rf"\g<1>{key} = {value}", text, flags=re.S
    )
    assert n == 1, (section, key)
    p.write_text(text)


def start_run(paths, api: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_end(paths, api: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def approve(paths, api: str, run_id: str, key: Path, *extra: str, yes: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "approve",
            run_id,
            "--key",
            str(key),
            "--config",
            str(paths["policy"]),
            "--wait",
            "60",
            *(["--yes"] if yes else []),
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        capture_output=True,
        text=True,
        timeout=180,
    )


def run_logs(run_id: str) -> list[str]:
    import asyncio
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])), limit=200
            )
            return [log.message for log in logs]

    return asyncio.run(go())


def approve_async(paths, api: str, run_id: str, key: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "approve", run_id, "--key", str(key), "--config", str(paths["policy"])]
    return subprocess.Popen(
        [*cmd, "--wait", "120", "--yes"],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": api},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def send_junk(paths, api: str, run_id: str, n: int) -> None:
    """Write n unsigned, unparseable submissions straight to the Prefect API, each after the run paused again."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    async def go() -> None:
        ledger = Ledger(paths["ledger"])
        async with get_client() as client:
            for i in range(n):
                deadline = time.monotonic() + 60
                while True:
                    done = sum(1 for e in ledger.entries() if e["kind"] == "approval.received")
                    fr = await client.read_flow_run(run_id)
                    if done == i and fr.state is not None and fr.state.is_paused():
                        break
                    assert time.monotonic() < deadline, "the run did not pause again after junk"
                    await asyncio.sleep(0.1)
                if i % 2:  # unparseable
                    junk = {"statement": f"junk {i} {{", "signature": "not a signature"}
                else:  # a well-formed statement for this run, unsigned
                    stmt = approval.make_statement(run_id, "sha256:" + "0" * 64, "alice@airlock.demo", "approve")
                    junk = {"statement": stmt, "signature": "-----BEGIN SSH SIGNATURE-----\nAAAA\n"}
                await resume_flow_run(run_id, run_input=junk)

    asyncio.run(go())


def submit_twice_at_once(paths, api: str, run_id: str, fields: dict, timeout: float = 60) -> None:
    """The same signed approval written to the Prefect API twice at the same instant (two threads), again at each
    pause, until the flow has judged it: Prefect may ABORT one (the run was no longer paused), never both counted."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import aresume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ledger = Ledger(paths["ledger"])
    before = sum(1 for e in ledger.entries() if e["kind"] == "approval.received")

    async def go() -> None:
        async with get_client() as client:
            deadline = time.monotonic() + timeout
            while sum(1 for e in ledger.entries() if e["kind"] == "approval.received") == before:
                assert time.monotonic() < deadline, "the flow never judged the approval sent twice"
                fr = await client.read_flow_run(run_id)
                if fr.state is not None and fr.state.is_paused():
                    await asyncio.gather(
                        *(aresume_flow_run(run_id, run_input=fields) for _ in range(2)), return_exceptions=True
                    )
                await asyncio.sleep(0.3)

    with temporary_settings({PREFECT_API_URL: api}):
        asyncio.run(go())


def wait_for_pause(paths, proc: subprocess.Popen, timeout: float = 240, after: str | None = None) -> str:
    """The run id of the first approval request (of a run other than `after`)."""
    ledger = Ledger(paths["ledger"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.path.exists():
            for e in ledger.entries():
                if e["kind"] == "approval.requested" and e["run_id"] != after:
                    return e["run_id"]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before pausing: {proc.stdout.read()} {proc.stderr.read()}")
        time.sleep(0.5)
    raise AssertionError("run never paused for approval")


def kinds(paths) -> list[str]:
    return [e["kind"] for e in Ledger(paths["ledger"]).entries()]


def nothing_staged_or_promoted(paths) -> bool:
    return not (paths["registry"] / "staging").exists() and not (paths["registry"] / "production").exists()
