"""The golden stand-in's trainings: one new sandboxed process each, against forks of one (``training.fork``).

    python3 bench/stand_in_fork.py [--rounds 3]

On the demo's golden set (300 digits, airlock.datasets.write_digits) and the example trainer with its committed
config, the backdoor gate's five stand-in trainings (seeds 1234..1238), two at a time as the evaluator runs them,
in bubblewrap (airlock/sandbox.py), from the repository's own ``training/`` as the export. Each round runs both
ways, in alternating order; the figure is the median round. Every round checks that both ways wrote the same bytes.
Writes ``bench/results/stand_in_fork.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also runnable as python3 bench/<name>.py

from airlock.datasets import load_split, write_digits  # noqa: E402
from airlock.sandbox import Sandbox  # noqa: E402
from bench._machine import processor  # noqa: E402
from gates.backdoor import SandboxedTrainer, _stand_in_jobs  # noqa: E402

MODELS, PARALLEL = 5, 2
COMMAND = ["{python}", "-m", "training.train"]


def trainings(src: Path, x, y, work: Path, fork: bool) -> tuple[float, dict[str, str]]:
    """The five trainings, two at a time; (seconds, sha256 of every file written)."""
    from concurrent.futures import ThreadPoolExecutor

    out = work / ("forked" if fork else "new-processes")
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    with SandboxedTrainer(COMMAND, src, Sandbox(), timeout=600, fork=fork) as trainer:
        run, jobs = _stand_in_jobs(x, y, out, src / "training" / "config.toml", MODELS, "training.train", 600, trainer)
        with ThreadPoolExecutor(PARALLEL) as pool:
            for f in [pool.submit(run, *j) for j in jobs]:
                f.result()
    seconds = time.monotonic() - start
    digests = {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.glob("trained/seed-*/*"))
        if p.is_file()
    }
    return seconds, digests


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 bench/stand_in_fork.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stand_in_fork.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        src = work / "src"
        shutil.copytree(ROOT / "training", src / "training", ignore=shutil.ignore_patterns("__pycache__"))
        write_digits(work / "train", work / "golden")
        x, y = load_split(work / "golden", "golden")
        rounds = []
        for r in range(args.rounds):
            times: dict[bool, float] = {}
            made: dict[bool, dict[str, str]] = {}
            for fork in (r % 2 == 0, r % 2 != 0):
                times[fork], made[fork] = trainings(src, x, y, work, fork)
            if made[True] != made[False] or len(made[True]) != 2 * MODELS:
                print("stand_in_fork: the forked trainings wrote different files", file=sys.stderr)
                return 1
            rounds.append({"new_processes": round(times[False], 2), "forked": round(times[True], 2)})
            print(f"round {r + 1}: new processes {times[False]:.2f} s, forked {times[True]:.2f} s", flush=True)
    mid = sorted(rounds, key=lambda row: row["new_processes"] / row["forked"])[len(rounds) // 2]
    result = {
        "command": "python3 bench/stand_in_fork.py",
        "machine": {"cpus": os.cpu_count(), "processor": processor(), "python": platform.python_version()},
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "models": MODELS,
        "parallel": PARALLEL,
        "rounds": rounds,
        "median_round": mid,
        "new_processes_over_forked": round(mid["new_processes"] / mid["forked"], 2),
        "identical_outputs": True,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{MODELS} stand-in trainings, {PARALLEL} at a time, median round: new processes {mid['new_processes']:.2f} s,"
        f" forked {mid['forked']:.2f} s: {result['new_processes_over_forked']:.2f}x faster; outputs identical;"
        f" {processor()}; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
