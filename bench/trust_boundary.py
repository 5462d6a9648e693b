"""What the trust boundary costs: sandboxed training and out-of-process model gates against their baselines.

    python3 -m bench.trust_boundary            (from the repository root; ~4 min on 2 cores)

Writes bench/results/trust_boundary.json and prints the BENCHMARKS.md table. Everything is measured in this one
run, on the demo data (scikit-learn digits) and the example trainer, with the demo's default (calibrated) gate
parameters:

* training: ``python -m training.train`` as a plain child process with the allowlisted environment (the bare
  baseline) against the same command in bubblewrap (``airlock.sandbox``), alternated, median of ``--repeats``;
* model-gate stage, first promotion (backdoor against the 5-model golden stand-in): the previous in-process design
  (model code imported into the evaluator, stand-ins trained one after another as plain subprocesses and loaded
  in-process) against the trust-boundary design (``flows._evaluate``: the model answers from a sandboxed oracle,
  stand-ins trained in the sandbox), the latter both with the flow's two stand-in trainers at once and with one,
  which isolates the oracle's own cost from the parallelism.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also runnable as python3 bench/<name>.py

import torch  # noqa: E402

from airlock.datasets import load_split, write_digits  # noqa: E402
from airlock.policy import AdvisoryPolicy, BackdoorPolicy, GoldenRegressionPolicy, RobustnessPolicy  # noqa: E402
from airlock.sandbox import Sandbox  # noqa: E402


def _train(box: Sandbox, data: Path, out: Path) -> float:
    job = box.job("trainer", ro={"src": ROOT, "data": data}, rw={"out": out}, cwd="src", timeout=600)
    t0 = time.perf_counter()
    job.run(["{python}", "-m", "training.train", "--data", job.path("data"), "--out", job.path("out")])
    return time.perf_counter() - t0


def training(data: Path, work: Path, repeats: int) -> dict:
    bare, boxed = [], []
    for i in range(repeats):
        bare.append(_train(Sandbox(mode="environment"), data, work / f"bare-{i}"))
        boxed.append(_train(Sandbox(), data, work / f"boxed-{i}"))
    b, s = statistics.median(bare), statistics.median(boxed)
    same = (work / "bare-0" / "model.safetensors").read_bytes() == (work / "boxed-0" / "model.safetensors").read_bytes()
    return {
        "bare_s": bare,
        "sandboxed_s": boxed,
        "bare_median": b,
        "sandboxed_median": s,
        "ratio": s / b,
        "added_s": s - b,
        "identical_weights": same,
    }


PARAMS = {
    "evaluation": {"min_test_accuracy": 0.9, "min_golden_accuracy": 0.9},
    "robustness": RobustnessPolicy().model_dump(),
    "backdoor": BackdoorPolicy().model_dump(),
    "golden_regression": GoldenRegressionPolicy().model_dump(),
    "advisory": AdvisoryPolicy().model_dump(),
}


def in_process(model_dir: Path, data: Path, golden: Path, work: Path) -> tuple[float, dict]:
    """The previous design: the team's model imported into the evaluator's process."""
    from gates import advisory as A
    from gates import backdoor as B
    from gates import evaluation as E
    from gates import golden_regression as G
    from gates import robustness as R
    from gates.model_gates import gate

    t0 = time.perf_counter()
    model, meta = B.load_trained(model_dir)
    x, y = load_split(data, "train")
    tx, ty = load_split(data, "test")
    gx, gy = load_split(golden, "golden")
    verdicts = {}
    verdicts["evaluation"] = E.check(model, meta, (tx, ty), (gx, gy), E.EvalThresholds(0.9, 0.9)).verdict.value
    verdicts["robustness"] = R.check(model, meta, tx, ty, gate("robustness").build(PARAMS["robustness"])).verdict.value
    bp = gate("backdoor").build(PARAMS["backdoor"])
    cand = B.reverse_engineer(model, meta, gx, gy, bp)

    def plain(d: Path, out: Path, cfg: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "training.train", "--data", str(d), "--out", str(out), "--config", str(cfg)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )

    ref = B.stand_in_reference(gx, gy, work / "stand-in-inproc", bp, trainer=plain, parallel=1)
    verdicts["backdoor"] = B.check(cand, ref, bp, reference_kind="golden-stand-in").verdict.value
    verdicts["golden_regression"] = G.check(model, meta, gx, gy).verdict.value
    ap = gate("advisory").build(PARAMS["advisory"])
    A.membership_inference(model, meta, x, y, tx, ty, ap)
    A.extraction_effort(model, meta, x, tx, ap)
    A.spectral_signatures(model, meta, x, y, ap, classes=[0])
    return time.perf_counter() - t0, verdicts


def out_of_process(model_dir: Path, data: Path, golden: Path, work: Path, parallel: int) -> tuple[float, dict, int]:
    from flows import _evaluate

    req = {
        "src": str(ROOT),
        "model": str(model_dir),
        "workdir": str(work),
        "train_dir": str(data),
        "golden_dir": str(golden),
        "threads": 1,
        "seed": 0,
        "timeout": 1200,
        "training_command": ["{python}", "-m", "training.train"],
        "parallel": parallel,
        "sandbox": {"mode": "bubblewrap", "bwrap": "bwrap", "memory_mb": 8192, "output_mb": 2048},
        "params": PARAMS,
    }
    t0 = time.perf_counter()
    out = _evaluate.run(req)
    return time.perf_counter() - t0, {r["gate"]: r["verdict"] for r in out["results"]}, out.get("oracle_calls", 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="airlock-bench-tb-") as tmp:
        work = Path(tmp)
        data, golden = work / "data", work / "golden"
        write_digits(data, golden)
        tr = training(data, work / "train", args.repeats)
        model_dir = work / "train" / "boxed-0"
        old_s, old_v = in_process(model_dir, data, golden, work)
        new2_s, new2_v, calls = out_of_process(model_dir, data, golden, work / "oop-2", parallel=2)
        new1_s, new1_v, _ = out_of_process(model_dir, data, golden, work / "oop-1", parallel=1)
    result = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cores": __import__("os").cpu_count(),
        },
        "training": tr,
        "model_gates": {
            "in_process_s": old_s,
            "out_of_process_parallel2_s": new2_s,
            "out_of_process_parallel1_s": new1_s,
            "ratio_parallel2": new2_s / old_s,
            "ratio_parallel1": new1_s / old_s,
            "oracle_calls_candidate": calls,
            "verdicts_in_process": old_v,
            "verdicts_out_of_process": new2_v,
        },
    }
    out = ROOT / "bench" / "results" / "trust_boundary.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measurement | baseline (s) | trust boundary (s) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| training (median of {args.repeats}): bare child vs bubblewrap | {tr['bare_median']:.2f} | "
        f"{tr['sandboxed_median']:.2f} | {tr['ratio']:.3f}× ({tr['added_s']:+.2f} s) |"
    )
    print(
        f"| model-gate stage, first promotion: in-process vs oracle, 2 stand-in trainers at once | {old_s:.1f} | "
        f"{new2_s:.1f} | {new2_s / old_s:.2f}× |"
    )
    print(
        f"| model-gate stage, first promotion: in-process vs oracle, 1 stand-in trainer at a time | {old_s:.1f} | "
        f"{new1_s:.1f} | {new1_s / old_s:.2f}× |"
    )
    print(
        f"identical weights bare vs sandboxed: {tr['identical_weights']}; verdicts in-process {old_v}, "
        f"oracle {new2_v}; {calls} oracle calls for the candidate"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
