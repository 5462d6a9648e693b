"""Model-gate sandbox: ``python -P -m flows._evaluate REQUEST.json OUT.json`` runs every model gate.

The model definition is the team's code, so it is imported only here, in a subprocess started with the same
secret-free environment as training, never in the flow process that later signs. Airlock's own gate modules are
imported first (from the installed package); then each model's architecture is imported from the export of the
commit it was trained from (the candidate's verified commit; production's training commit), one at a time, so two
versions of the team's package can be compared. Results come back as JSON: a list of GateResults and the paths of
any plots.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from dataclasses import replace
from pathlib import Path

# Airlock's own code first: a `gates` package in the commit under test must not replace the gates.
import art  # noqa: F401  (import ART before anything configures logging)
import gates.advisory as advisory
import gates.backdoor as backdoor
import gates.evaluation as evaluation
import gates.golden_regression as golden_regression
import gates.robustness as robustness
from airlock.datasets import load_split
from gates._result import GateResult, Verdict


def _purge_team_modules(package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def load_model(src: Path, model_dir: Path):
    """Build the architecture from `src` (a commit export) and load safetensors weights (no pickle)."""
    from safetensors.torch import load_file

    meta = json.loads((model_dir / "training.json").read_text())
    module_name, _, func = meta.get("architecture", "training.model:build_model").partition(":")
    package = module_name.split(".")[0]
    _purge_team_modules(package)
    sys.path.insert(0, str(src))
    try:
        module = importlib.import_module(module_name)
        if not str(getattr(module, "__file__", "")).startswith(str(src)):
            raise RuntimeError(f"{module_name} did not load from {src}")
        model = getattr(module, func or "build_model")(meta["hyperparameters"])
    finally:
        sys.path.remove(str(src))
        _purge_team_modules(package)          # the next model imports its own version
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    model.eval()
    return model, meta


def _params(cls, values: dict, **extra):
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return replace(cls(), **{k: v for k, v in fields.items() if k in cls.__dataclass_fields__}, **extra)


def run(req: dict) -> dict:
    import numpy as np
    import torch

    threads, seed = int(req["threads"]), int(req["seed"])
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    work = Path(req["workdir"])
    out: dict = {"results": [], "plots": {}}

    cand, meta = load_model(Path(req["src"]), Path(req["model"]))
    prod = prod_meta = None
    if req.get("prod_model"):
        prod, prod_meta = load_model(Path(req["prod_src"]), Path(req["prod_model"]))
    x_tr, y_tr = load_split(Path(req["train_dir"]), "train")
    x_te, y_te = load_split(Path(req["train_dir"]), "test")
    x_go, y_go = load_split(Path(req["golden_dir"]), "golden")
    p = req["params"]

    def add(result: GateResult) -> GateResult:
        out["results"].append(result.to_dict())
        print(f"{result.gate} done ({result.verdict.value})", flush=True)   # progress; verdicts come from the flow
        return result

    # Accuracy on the test split and the golden set.
    add(evaluation.check(cand, meta, (x_te, y_te), (x_go, y_go),
                         evaluation.EvalThresholds(p["evaluation"]["min_test_accuracy"],
                                                   p["evaluation"]["min_golden_accuracy"], seed)))

    # Evasion robustness, decided on the Wilson lower bound, and its regression against production.
    rp = _params(robustness.RobustnessParams, p["robustness"], seed=seed, threads=threads)
    r = add(robustness.check(cand, meta, x_te, y_te, rp, reference=prod, reference_meta=prod_meta))
    out["plots"]["robustness"] = str(robustness.write_curve(r, work / "robustness-curve.png"))

    # Backdoor: per-class minimal triggers against production's (cached in its signed evidence) or a stand-in
    # trained by the same trainer on the known-clean golden set when nothing is in production.
    bp = _params(backdoor.BackdoorParams, p["backdoor"], seed=seed, threads=threads)
    cand_norms = backdoor.reverse_engineer(cand, meta, x_go, y_go, bp)
    reference, kind = req.get("prod_backdoor"), "production"
    if reference is not None and not _compatible(reference, cand_norms):
        reference = None                        # cached with other images or params: recompute on production
    if reference is None and prod is not None:
        reference = backdoor.reverse_engineer(prod, prod_meta, x_go, y_go, bp)
    if reference is None:
        kind = "golden-stand-in"
        print(f"         {'backdoor':18} no production model: training {bp.stand_in_models} stand-in model(s) "
              "on the golden set", flush=True)
        # The stand-in is trained by the verified commit's trainer (its package first on the path), no other.
        sys.path.insert(0, req["src"])
        try:
            _purge_team_modules("training")
            reference = backdoor.stand_in_reference(x_go, y_go, work / "stand-in", bp,
                                                    config=Path(req["src"]) / "training" / "config.toml",
                                                    loader=lambda d: load_model(Path(req["src"]), Path(d)))
        finally:
            sys.path.remove(req["src"])
            _purge_team_modules("training")
    b = add(backdoor.check(cand_norms, reference, bp, reference_kind=kind))

    # Golden-set regression against production (paired McNemar).
    gp = _params(golden_regression.GoldenRegressionParams, p["golden_regression"])
    add(golden_regression.check(cand, meta, x_go, y_go, gp, reference=prod))

    # Advisory: reported and recorded in the bill of materials, never blocking.
    if p["advisory"].get("enabled", True):
        ap = _params(advisory.AdvisoryParams, p["advisory"], seed=seed, threads=threads)
        add(advisory.membership_inference(cand, meta, x_tr, y_tr, x_te, y_te, ap))
        add(advisory.extraction_effort(cand, meta, x_tr, x_te, ap))
        flagged = b.metrics.get("min_trigger_ratio_class")
        add(advisory.spectral_signatures(cand, meta, x_tr, y_tr, ap,
                                         classes=None if flagged is None else [int(flagged)]))
    return out


def _compatible(cached: dict, fresh: dict) -> bool:
    return cached.get("images_sha256") == fresh.get("images_sha256") and cached.get("params") == fresh.get("params")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(argv[0]).read_text())
    try:
        out = run(req)
    except Exception as e:  # noqa: BLE001 - the team's code can fail any way; that is a refusal, not a crash
        traceback.print_exc()
        out = {"results": [GateResult(evaluation.GATE, Verdict.FAIL,
                                      f"cannot evaluate the model: {type(e).__name__}: {str(e)[:200]} — check that "
                                      "training/model.py builds the architecture the trainer saved").to_dict()],
               "plots": {}}
    Path(argv[1]).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
