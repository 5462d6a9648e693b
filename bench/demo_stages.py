"""Split the demo's wall time per stage, against bare training measured in the same run.

    python3 bench/demo_stages.py [--out bench/results/demo_stages.json]

Runs `airlock demo --json` in a fresh directory, then reads the stage boundaries from the ledger's timestamps
(every gate verdict, registry write and approval is an entry). The baseline is the example trainer alone
(`python -m training.train` on the same data; the median of three runs), run in the same process tree right after,
so that the ratios hold on whatever machine runs the benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from airlock.ledger import Ledger  # noqa: E402
from bench._machine import processor  # noqa: E402


def t(entry: dict) -> float:
    return dt.datetime.fromisoformat(entry["time"]).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_stages.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-")) / "demo"

    start = time.time()
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(work), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.time() - start
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return 1
    demo = json.loads(res.stdout)
    entries = list(Ledger(demo["paths"]["ledger"]).entries())

    def first(kind: str, gate: str | None = None) -> float:
        for e in entries:
            if e["kind"] == kind and (gate is None or e["data"].get("gate") == gate):
                return t(e)
        raise KeyError(kind, gate)

    marks = [
        ("process start, demo setup, Prefect start-up", start, first("run.start")),
        ("commit gate", first("run.start"), first("gate.verdict", "commit")),
        (
            "environment + data gates (hash + snapshot + re-verify)",
            first("gate.verdict", "commit"),
            first("gate.verdict", "data:golden"),
        ),
        ("training + artifact gate", first("gate.verdict", "data:golden"), first("gate.verdict", "artifact")),
        (
            "model gates (sandboxed; first promotion: incl. 5-model golden stand-in)",
            first("gate.verdict", "artifact"),
            first("gate.verdict", "evaluation"),
        ),
        ("AIBOM + signing + staging", first("gate.verdict", "evaluation"), first("registry.stage")),
        ("two approvals from separate processes", first("approval.requested"), first("gate.verdict", "approval")),
        ("promotion (registry re-verifies)", first("gate.verdict", "approval"), first("registry.promote")),
        ("verify production + exit", first("registry.promote"), start + wall),
    ]
    stages = [{"stage": name, "seconds": round(b - a, 3)} for name, a, b in marks]

    # Baseline in the same run: the trainer alone on the same data, three times (its time varies by a tenth or more
    # from one run to the next on a shared machine); the median is the figure.
    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as d:
            b0 = time.time()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "training.train",
                    "--data",
                    str(work / "data" / "train"),
                    "--out",
                    str(Path(d) / "out"),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            runs.append(time.time() - b0)
    baseline = sorted(runs)[1]

    result = {
        "command": "python3 bench/demo_stages.py",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": processor(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "demo_wall_seconds": round(wall, 2),
        "baseline_training_seconds": round(baseline, 2),
        "baseline_runs_seconds": [round(r, 2) for r in runs],
        "demo_over_training": round(wall / baseline, 2),
        "stages": [
            s | {"share": round(s["seconds"] / wall, 3), "over_training": round(s["seconds"] / baseline, 2)}
            for s in stages
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| stage | seconds | share of demo | ÷ bare training |\n|---|---|---|---|")
    for s in result["stages"]:
        print(f"| {s['stage']} | {s['seconds']:.2f} | {s['share']:.0%} | {s['over_training']:.2f}× |")
    print(f"| **whole demo** | {wall:.2f} | 100% | {result['demo_over_training']:.2f}× |")
    print(
        f"\nbaseline: bare training {baseline:.2f} s (median of {', '.join(f'{r:.2f}' for r in runs)}) on "
        f"{result['machine']['processor']}; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
