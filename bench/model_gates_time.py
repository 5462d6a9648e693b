"""Wall time of the whole model-gate stage for the demo, with the default (calibrated) parameters.

    python3 -m bench.model_gates_time

Two scenarios, on the demo digits data, with a candidate already trained (training is not part of the stage):

* first promotion - nothing in production: robustness without reference, backdoor against the golden stand-in
  (5 golden-set models trained with ``python -m training.train`` in subprocesses, then Neural Cleanse on each),
  golden regression (no reference), advisory checks;
* retrain - production present, its Neural Cleanse norms cached at promotion: robustness with the paired
  regression test (production attacked too), backdoor against the cached norms, golden regression, advisory.

Torch is pinned to 1 thread (the gates pin it themselves); the 2-core budget is for the machine.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as python3 bench/<name>.py

from gates import advisory as A
from gates import backdoor as B
from gates import golden_regression as G
from gates import robustness as R
from tests import _model_fixtures as F


def stage(candidate, meta, data, production=None, production_norms=None, workdir: Path | None = None):
    x, y = data["train"]
    tx, ty = data["test"]
    gx, gy = data["golden"]
    times: dict[str, float] = {}
    verdicts: dict[str, str] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t0
        if hasattr(out, "verdict"):
            verdicts[name] = out.verdict.value
        return out

    t_all = time.perf_counter()
    timed("robustness", lambda: R.check(candidate, meta, tx, ty, reference=production))
    cand_norms = timed("backdoor: Neural Cleanse on candidate", lambda: B.reverse_engineer(candidate, meta, gx, gy))
    if production_norms is None:
        ref = timed(
            "backdoor: golden stand-in (train 5 + Neural Cleanse 5)", lambda: B.stand_in_reference(gx, gy, workdir)
        )
    else:
        ref = production_norms
    timed("backdoor: decision", lambda: B.check(cand_norms, ref))
    timed("golden regression", lambda: G.check(candidate, meta, gx, gy, reference=production))
    timed("advisory: membership inference", lambda: A.membership_inference(candidate, meta, x, y, tx, ty))
    timed("advisory: extraction effort", lambda: A.extraction_effort(candidate, meta, x, tx))
    timed("advisory: spectral signatures", lambda: A.spectral_signatures(candidate, meta, x, y))
    times["total"] = time.perf_counter() - t_all
    return times, verdicts


def main() -> int:
    torch.set_num_threads(1)
    data = F.digits()
    production, meta = F.clean_model(1234)
    candidate, _ = F.clean_model(1)
    prod_norms = B.reverse_engineer(production, meta, *data["golden"])  # cached at promotion, not part of the stage
    print(f"python {platform.python_version()}, torch {torch.__version__}, 1 torch thread; default params")
    with tempfile.TemporaryDirectory() as tmp:
        first = stage(production, meta, data, workdir=Path(tmp))
    second = stage(candidate, meta, data, production=production, production_norms=prod_norms)
    names = list(first[0])
    for n in second[0]:
        if n not in names:
            names.insert(len(names) - 1, n)
    print("| step | first promotion (s) | retrain (s) |")
    print("|---|---|---|")
    for n in names:
        a, b = first[0].get(n), second[0].get(n)
        fa = f"{a:.1f}" if a is not None else "-"
        fb = f"{b:.1f}" if b is not None else "-"
        if n == "total":
            fa, fb = f"**{fa}**", f"**{fb}**"
        print(f"| {n} | {fa} | {fb} |")
    print("verdicts, first promotion:", first[1])
    print("verdicts, retrain:", second[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
