"""Approval latency against a running local Prefect server: how long an approver waits for the flow's verdict.

    python3 -m bench.approval_latency [--samples 20] [--out bench/results/approval_latency.json]

One demo work directory (cheap model-gate settings), one local Prefect server (flows/_server.py), one run paused
for approval. Then ``--samples`` signed approvals are submitted one after another through the CLI's own submit path
(``flows.cli._submit_approval``, in this process: no interpreter start-up in the figure), each by a real approver
but for another model digest, so that the flow verifies it, refuses it (``approval.wrong_model``) and pauses again:
each sample is the full round trip submit -> resume -> verification in the flow -> verdict artifact -> seen by the
approver (one warm-up submission first, not counted). Last, the two real approvals: approval-to-promotion is from the second one's submit to the registry's
``registry.promote`` ledger entry. Targets (issue 10): p50 <= 1 s, p95 <= 2 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "approval_latency.json")
    args = ap.parse_args()

    from airlock.ledger import Ledger
    from flows import _server, demo

    work = Path(tempfile.mkdtemp(prefix="airlock-latency-")) / "demo"
    demo._require_empty(work)
    server = _server.Server(work / "prefect").start()
    try:
        paths = demo.build(work, checked=True)
        text = paths["policy"].read_text()
        for old, new in (
            ("stand_in_models = 5", "stand_in_models = 1\nimages = 100\nsteps = 60"),
            ("ratio_no_production = 0.70", "ratio_no_production = 0.5"),
            ("max_attempts = 20", f"max_attempts = {args.samples + 6}"),
        ):
            text = text.replace(old, new)
        paths["policy"].write_text(text)
        url = server.wait()
        os.environ["PREFECT_API_URL"] = url
        env = {**os.environ, "PREFECT_API_URL": url}
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(paths["policy"])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ledger = Ledger(paths["ledger"])
        run_id = None
        while run_id is None:
            if run.poll() is not None:
                print("the run ended before it paused", file=sys.stderr)
                return 1
            time.sleep(0.5)
            if ledger.path.exists():
                run_id = next((e["run_id"] for e in ledger.entries() if e["kind"] == "approval.requested"), None)

        from airlock.approvals import make_statement, sign
        from flows import cli
        from flows._console import _prefect_env

        _prefect_env(False, home=paths["prefect_home"])
        a = SimpleNamespace(run_id=run_id, wait=60.0)

        def submit(who: str, digest: str) -> tuple[float, int, float | None]:
            """Round trip, exit code, and the part until the flow logged its verdict (the ledger's clock)."""
            stmt = make_statement(run_id, digest, f"{who}@airlock.demo", "approve")
            signed = sign(paths["keys"] / who, stmt)
            seen = sum(1 for e in ledger.entries() if e["kind"] == "approval.received")
            wall, t0 = time.time(), time.perf_counter()
            try:
                code = cli._submit_approval(a, signed, stmt, f"{who}@airlock.demo", "approve")
            except Exception:  # noqa: BLE001 - a refusal raised by the CLI path still ends the round trip
                code = 1
            total = time.perf_counter() - t0
            received = [e for e in ledger.entries() if e["kind"] == "approval.received"][seen:]
            flow = dt.datetime.fromisoformat(received[0]["time"]).timestamp() - wall if received else None
            return total, code, flow

        submit("alice", "sha256:" + "f" * 64)  # warm-up, not counted: this process's first use of the client
        runs = [submit("alice", "sha256:" + f"{i:064x}") for i in range(args.samples)]
        samples = [r[0] for r in runs]
        to_flow = [r[2] for r in runs]
        staged = next(e["data"]["digest"] for e in ledger.entries() if e["kind"] == "approval.requested")
        submit("alice", staged)
        t_last = time.time()
        submit("bob", staged)
        run.wait(timeout=120)
        promoted = next(
            (
                dt.datetime.fromisoformat(e["time"]).timestamp()
                for e in ledger.entries()
                if e["kind"] == "registry.promote"
            ),
            None,
        )
    finally:
        server.stop()
    q = statistics.quantiles(samples, n=20)
    result = {
        "command": "python3 -m bench.approval_latency",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "samples": [round(s, 3) for s in samples],
        # submit -> the flow's ledger entry for it (resume, the flow's poll, verification); the rest is the verdict
        # artifact and the approver's poll for it
        "submit_to_flow_verdict": [None if s is None else round(s, 3) for s in to_flow],
        "p50_seconds": round(statistics.median(samples), 3),
        "p95_seconds": round(q[18], 3),
        "approval_to_promotion_seconds": None if promoted is None else round(promoted - t_last, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
