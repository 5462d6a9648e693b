"""Evaluation sandbox: ``python -P -m flows._evaluate ...`` loads the team's model and runs the evaluation gates.

The model definition is the team's code, so it is imported only here, in a subprocess started with the same
secret-free environment as training, never in the flow process that later signs. Airlock's own gate modules are
imported first (from the installed package), then the verified commit's export is put on the path for the model
definition alone. The result comes back as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# Airlock's own code first: a `gates` package in the commit under test must not replace the gates.
import art  # noqa: F401  (import ART before anything configures logging)
import gates.evaluation as evaluation
from airlock.datasets import load_split
from gates._result import GateResult


def load_model(src: Path, model_dir: Path):
    import torch
    from safetensors.torch import load_file

    meta = json.loads((model_dir / "training.json").read_text())
    module_name, _, func = meta.get("architecture", "training.model:build_model").partition(":")
    for name in [m for m in sys.modules if m == "training" or m.startswith("training.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    module = importlib.import_module(module_name)
    if not str(getattr(module, "__file__", "")).startswith(str(src)):
        raise RuntimeError(f"{module_name} did not load from the verified commit")
    model = getattr(module, func or "build_model")(meta["hyperparameters"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))   # safetensors: no pickle
    model.eval()
    torch.set_grad_enabled(True)
    return model, meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--golden", type=Path, required=True)
    ap.add_argument("--thresholds", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    t = evaluation.EvalThresholds(**json.loads(a.thresholds))
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    try:
        model, meta = load_model(a.src, a.model)
        result = evaluation.check(model, meta, load_split(a.test, "test"), load_split(a.golden, "golden"), t)
    except Exception as e:  # noqa: BLE001 - the team's code can fail any way; that is a refusal, not a crash
        result = GateResult.fail(evaluation.GATE, f"cannot evaluate the model: {type(e).__name__}: {str(e)[:200]} — "
                                                  "check training/model.py builds the architecture the trainer saved")
    a.out.write_text(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
