"""Reporting for the flow: every verdict goes to the ledger, to a Prefect artifact and to whoever listens (the CLI).

Kept apart from flows/retrain.py so that the flow reads as the security checklist.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airlock import modeldir
from airlock.errors import AirlockError, GateFailed
from airlock.ledger import Ledger
from gates._result import GateResult, Verdict


class OneLineRefusals(logging.Filter):
    """A refusal (an AirlockError raised in a task) is one line in Prefect's logs and the terminal, never a
    traceback: the task still ends Failed, with the reason as its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, AirlockError):
            record.msg, record.args = f"refused: {exc.one_line()}", ()
            record.exc_info, record.exc_text = None, None
        return True


def install_log_filter() -> None:
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        log = logging.getLogger(name)
        if not any(isinstance(f, OneLineRefusals) for f in log.filters):
            log.addFilter(OneLineRefusals())


# In-process listeners (the CLI prints progress and collects verdicts for --json).
LISTENERS: list[Callable[[str, dict[str, Any]], None]] = []


# Lines come from the flow's thread and from the evaluator's (started beside the training): one at a time.
_EMITTING = threading.RLock()


def emit(event: str, **data: Any) -> None:
    with _EMITTING:
        for listener in list(LISTENERS):
            listener(event, data)


class PrefectLog:
    """Every progress line and verdict also goes to the run's log in Prefect (its Logs tab), whatever the console's
    level: the lines the terminal shows, through Prefect's API handler, on a logger of Airlock's own."""

    def __init__(self) -> None:
        import io

        from prefect.logging.handlers import APILogHandler

        from flows._console import Printer

        self.buffer = io.StringIO()
        self.printer = Printer(self.buffer)
        self.logger = logging.getLogger("airlock.run")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # the console already has these lines, from the CLI's own Printer
        if not any(isinstance(h, APILogHandler) for h in self.logger.handlers):
            self.logger.addHandler(APILogHandler())

    def __call__(self, event: str, data: dict) -> None:
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return  # outside a run (tests calling flow steps directly): nothing to attach the record to
        self.printer(event, data)
        text, self.buffer = self.buffer.getvalue(), type(self.buffer)()
        self.printer.stream = self.buffer
        level = logging.ERROR if event == "failed" else logging.INFO
        for line in text.splitlines():
            if line.strip():
                self.logger.log(level, line.rstrip())


def artifact_key(name: str) -> str:
    return modeldir.evidence_name(name)  # a gate's artifact and its evidence file share the name


def gate_markdown(r: GateResult) -> str:
    icon = {"pass": "✅ PASS", "fail": "❌ FAIL", "advisory": "ℹ️ ADVISORY"}[r.verdict.value]
    lines = [f"## Gate `{r.gate}`: {icon}", "", f"**Code:** `{r.code}`", "", f"**Reason:** {r.reason}", ""]
    if r.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in r.metrics.items()]
        lines.append("")
    lines += [
        "<details><summary>Evidence</summary>",
        "",
        "```json",
        json.dumps(r.evidence, indent=2, sort_keys=True, default=str)[:20000],
        "```",
        "</details>",
    ]
    return "\n".join(lines)


def summary_markdown(results: list[GateResult], title: str) -> str:
    rows = ["| gate | verdict | code | reason |", "|---|---|---|---|"]
    rows += [f"| {r.gate} | {r.verdict.value.upper()} | `{r.code}` | {r.reason.replace('|', '/')} |" for r in results]
    return f"# {title}\n\n" + "\n".join(rows)


def form_markdown(results: list[GateResult], digest: str, command: str, warning: str = "") -> str:
    """What the pause's form says (the Prefect UI's Resume dialog is ~450 px wide): nothing there can scroll out of
    sight - a list instead of a table, the digest and the commands broken into lines that fit."""
    algo, _, hexdigest = digest.partition(":")
    digest_lines = [f"{algo}:"] + [hexdigest[i : i + 32] for i in range(0, len(hexdigest), 32)]
    gates = [f"- **{r.gate}** {r.verdict.value.upper()} `{r.code}`: {_wrappable(r.reason)}" for r in results]

    def block(cmd: str) -> str:
        first, *opts = cmd.split(" --")
        return "\n".join("    " + line for line in [first + " \\", *(f"  --{o} \\" for o in opts)])[:-2]

    return "\n\n".join(
        [
            "### Approve this model?",
            *([warning.strip()] if warning else []),
            "Model digest (check it against what `airlock approve` shows):",
            "\n".join("    " + line for line in digest_lines),
            "Gate verdicts, signed with the model:",
            "\n".join(gates),
            "Approve from a terminal:",
            block(command),
            "Or paste below the two fields printed by:",
            block(command + " --print-only --yes"),
            "or a statement from `airlock approve RUN --as NAME --statement-only`, signed with "
            "`ssh-keygen -Y sign -n airlock-approval` (statement: the file's content; signature: the .sig file's).",
        ]
    )


def _wrappable(text: str, longest: int = 32) -> str:
    """A browser cannot wrap a word: a key fingerprint or a path longer than ``longest`` is shortened (in full in
    the signed evidence and in what ``airlock approve`` shows)."""
    return " ".join(w if len(w) <= longest else w[: longest - 8] + "…" + w[-4:] for w in text.split(" "))


class RunRecorder:
    """Records each gate result: ledger entry, evidence file, Prefect artifact, listeners; raises GateFailed on FAIL."""

    def __init__(self, ledger: Ledger, run_id: str, evidence_dir: Path) -> None:
        self.ledger, self.run_id, self.evidence_dir = ledger, run_id, evidence_dir
        self.results: list[GateResult] = []

    def record(self, result: GateResult, publish: bool = True, raise_on_fail: bool = True) -> GateResult:
        self.results.append(result)
        self.ledger.append("gate.verdict", result.to_dict(), run_id=self.run_id)
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        name = artifact_key(result.gate)
        (self.evidence_dir / f"{name}.json").write_text(
            json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
        )
        if publish:
            publish_markdown(f"gate-{name}", gate_markdown(result), f"{result.gate}: {result.verdict.value}")
        emit("gate", result=result)
        if raise_on_fail and result.verdict is Verdict.FAIL:
            raise GateFailed(f"{result.gate} gate refused: {result.reason} [{result.code}]")
        return result

    def record_all(self, results: list[GateResult]) -> list[GateResult]:
        """Record every result (so reviewers see them all), then refuse on the first failure."""
        for r in results:
            self.record(r, raise_on_fail=False)
        failed = [r for r in results if r.verdict is Verdict.FAIL]
        if failed:
            more = f" (and {len(failed) - 1} more gate(s) failed)" if len(failed) > 1 else ""
            raise GateFailed(f"{failed[0].gate} gate refused: {failed[0].reason}{more} [{failed[0].code}]")
        return results


def publish_markdown(key: str, markdown: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def publish_curve(png: Path, result: GateResult) -> None:
    """The robustness curve as a picture (markdown artifact, PNG inlined) and as a table."""
    import base64

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    data = base64.b64encode(png.read_bytes()).decode()
    create_markdown_artifact(
        key="robustness-curve",
        markdown=f"![robustness curve](data:image/png;base64,{data})",
        description="accuracy against epsilon, candidate vs production",
    )
    ref = {p["epsilon"]: p["accuracy"] for p in (result.evidence.get("reference_curve") or [])}
    rows = [
        {
            "epsilon": p["epsilon"],
            "candidate": round(p["accuracy"], 4),
            "production": round(ref[p["epsilon"]], 4) if p["epsilon"] in ref else None,
        }
        for p in result.evidence.get("curve") or []
    ]
    create_table_artifact(key="robustness-table", table=rows, description="PGD accuracy against epsilon")
