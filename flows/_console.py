"""Console output shared by the CLI and the demo: progress lines and verdicts of a run, and Prefect's settings.

Kept apart so that ``flows/cli.py`` (the commands) and ``flows/demo.py`` (``airlock demo``) do not import each
other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _prefect_env(verbose: bool = False, home: Path | None = None) -> None:
    """Prefect reads its settings at import: set them before anything imports prefect."""
    if home is not None:
        os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


class Printer:
    """Progress output for a run: one line per step and verdict (to stderr with --json)."""

    def __init__(self, stream=sys.stdout) -> None:
        self.stream = stream
        self.verdicts: dict[str, str] = {}
        self.events: dict[str, dict] = {}

    def __call__(self, event: str, data: dict) -> None:
        out = self.stream
        if event == "start":
            print(f"run {data['run_id']}  (work dir {data['run_dir']})", file=out, flush=True)
        elif event == "gate":
            r = data["result"]
            self.verdicts[r.gate] = r.verdict.value
            code = f" [{r.code}]" if not r.passed else ""
            print(f"  {r.verdict.value.upper():8} {r.gate:20} {r.reason}{code}", file=out, flush=True)
        elif event == "approval":
            r = data["result"]
            code = "" if r.passed else f" [{r.code}]"
            print(f"  {'ACCEPTED' if r.passed else 'REFUSED':8} {'approval':20} {r.reason}{code}", file=out, flush=True)
        elif event == "progress":
            print(f"  {'':8} {data['step']:20} {data['message']}", file=out, flush=True)
        elif event == "staged":
            print(f"  {'SIGNED':8} {'staging':20} {data['digest']}", file=out, flush=True)
        elif event == "awaiting":
            print(
                f"  {'PAUSED':8} {'approval':20} waiting for {data['needed']} to approve {data['digest']}\n"
                f"           approve with: {data['command']}",
                file=out,
                flush=True,
            )
        elif event == "failed":
            print(f"  {'STOPPED':8} {'':20} {data['reason']}", file=out, flush=True)
        elif event == "promoted":
            print(f"  {'PROMOTED':8} {'production':20} {data['model_digest']}", file=out, flush=True)
        self.events[event] = data
