"""Calibrate the backdoor gate's trigger-ratio threshold on clean and poisoned retrains.

    python3 -m bench.calibrate_backdoor [--seeds 10] [--json out.json]

For each seed s: a clean retrain (trainer seed s), and poisoned retrains (trainer seed s, poisoned rows drawn with
seed s) with the 4-pixel corner trigger at 1% and 0.5% of the training data and a different trigger shape (2x2
square, top-left) at 1%. The target class changes with the seed (s mod 10), so every class is a target once.
Each model's per-class Neural Cleanse norms (default BackdoorParams) are compared with two references:

* production: a clean model trained with the trainer's default seed (1234);
* golden stand-in: the per-class mean over 5 models trained by the same trainer on the known-clean golden set,
  seeds 1234..1238 (what the gate uses when nothing is in production: gates.backdoor.stand_in_reference; trained
  in-process here, identical weights).

For the clean and 1%-poisoned retrains it also runs the robustness gate (default RobustnessParams, on the test
split) and the golden-regression gate against production: their false-alarm rate on clean retrains, and that
neither of them notices the backdoor.

It prints, per model, the smallest median-normalised trigger ratio (the gate's statistic) and the backdoor's attack
success rate on the test split, then the block counts at the chosen thresholds and the separating interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as python3 bench/<name>.py

from gates import backdoor as B
from gates import golden_regression as G
from gates import robustness as R
from tests import _model_fixtures as F
from tests.poison import attack_success_rate

VARIANTS = (
    ("clean", 0.0, "corner"),
    ("poison-1%-corner", 0.01, "corner"),
    ("poison-0.5%-corner", 0.005, "corner"),
    ("poison-1%-square", 0.01, "square"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a BackdoorParams field (e.g. --set batch_size=32) to calibrate other settings",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = B.BackdoorParams()
    for item in args.set:
        field, _, value = item.partition("=")
        if not hasattr(params, field) or not value:
            ap.error(f"--set {item}: expected FIELD=VALUE with a BackdoorParams field")
        params = dataclasses.replace(params, **{field: type(getattr(params, field))(value)})
    gx, gy = F.digits()["golden"]
    tx, ty = F.digits()["test"]
    t0 = time.perf_counter()
    prod, meta = F.clean_model(1234)
    ref_prod = B.reverse_engineer(prod, meta, gx, gy, params)
    ref_gold = B.combine(
        [B.reverse_engineer(m, mm, gx, gy, params) for m, mm in F.golden_stand_in_models(params.stand_in_models)]
    )
    rows = []
    for s in range(args.seeds):
        target = s % int(meta["nb_classes"])
        for name, frac, shape in VARIANTS:
            if frac == 0.0:
                model, _ = F.clean_model(s + 1)
                asr = attack_success_rate(model, tx, ty, target, shape)
            else:
                model, _, _ = F.poisoned_model(seed=s + 1, fraction=frac, shape=shape, target=target)
                asr = attack_success_rate(model, tx, ty, target, shape)
            nc = B.reverse_engineer(model, meta, gx, gy, params)
            rp = B.relative_ratios(nc["norms"], ref_prod["norms"])
            rg = B.relative_ratios(nc["norms"], ref_gold["norms"])
            raw = list(np.asarray(nc["norms"]) / np.asarray(ref_prod["norms"]))
            row = {
                "seed": s + 1,
                "variant": name,
                "target": target,
                "attack_success": round(asr, 3),
                "min_ratio_production": round(min(rp), 4),
                "argmin_production": int(np.argmin(rp)),
                "target_ratio_production": round(rp[target], 4),
                "min_ratio_golden": round(min(rg), 4),
                "argmin_golden": int(np.argmin(rg)),
                "min_raw_ratio_production": round(float(min(raw)), 4),
                "max_anomaly_index": round(max(B.anomaly_index(nc["norms"])), 3),
                "nc_seconds": nc["seconds"],
            }
            if frac == 0.0 or name == "poison-1%-corner":
                rob = R.check(model, meta, tx, ty, R.RobustnessParams(), reference=prod)
                gold = G.check(model, meta, gx, gy, reference=prod)
                row.update(
                    robustness=rob.verdict.value,
                    robust_p=round(rob.metrics["regression_p_value"], 4),
                    robust_drop=round(rob.metrics["robust_drop"], 4),
                    golden_regression=gold.verdict.value,
                    golden_p=round(gold.metrics["p_value"], 4),
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    elapsed = time.perf_counter() - t0

    def summary(key: str) -> dict[str, dict[str, float]]:
        out = {}
        for name, _, _ in VARIANTS:
            v = [r[key] for r in rows if r["variant"] == name]
            out[name] = {"min": min(v), "median": float(np.median(v)), "max": max(v)}
        return out

    print(
        f"\nNeural Cleanse: {params.images} golden images, {params.steps} steps x {params.batch_size} images/class, "
        f"{len(rows) + 2} models, {elapsed:.0f} s total (incl. training); python {platform.python_version()}, "
        f"torch {torch.__version__}, 1 thread"
    )
    for key, thr in (("min_ratio_production", params.ratio), ("min_ratio_golden", params.ratio_no_production)):
        print(f"\n{key} (threshold {thr}):")
        print("| variant | min | median | max | blocked |")
        print("|---|---|---|---|---|")
        for name, st in summary(key).items():
            blocked = sum(1 for r in rows if r["variant"] == name and r[key] < thr)
            n = sum(1 for r in rows if r["variant"] == name)
            print(f"| {name} | {st['min']:.3f} | {st['median']:.3f} | {st['max']:.3f} | {blocked}/{n} |")
        clean_min = summary(key)["clean"]["min"]
        pois_max = summary(key)["poison-1%-corner"]["max"]
        print(f"separating interval at 1%: poisoned max {pois_max:.3f} < threshold <= clean min {clean_min:.3f}")
    for name in ("clean", "poison-1%-corner"):
        sel = [r for r in rows if r["variant"] == name and "robustness" in r]
        print(
            f"\n{name}: robustness gate FAIL {sum(r['robustness'] == 'fail' for r in sel)}/{len(sel)} "
            f"(min McNemar p {min(r['robust_p'] for r in sel):.3g}, max drop {max(r['robust_drop'] for r in sel):.3f}); "
            f"golden regression FAIL {sum(r['golden_regression'] == 'fail' for r in sel)}/{len(sel)} "
            f"(min p {min(r['golden_p'] for r in sel):.3g})"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "rows": rows,
                    "reference_production": ref_prod,
                    "reference_golden": ref_gold,
                    "params": params.optimisation(),
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
