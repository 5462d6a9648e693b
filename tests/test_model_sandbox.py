"""The model gates with hostile model code: every verdict is computed outside the sandbox the model runs in.

Each test builds a commit export whose ``training/model.py`` (or trainer) is hostile, and runs the real trusted
evaluator (``flows._evaluate.run``) against it: real bubblewrap, real oracle processes, real ART.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from airlock.datasets import load_split
from airlock.oracle import Oracle, OracleError
from airlock.sandbox import Sandbox
from flows import _evaluate
from gates import robustness as R
from tests import _model_fixtures as F

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "evaluation": {"min_test_accuracy": 0.9, "min_golden_accuracy": 0.9},
    "robustness": {
        "epsilons": [0.05],
        "gating_epsilon": 0.05,
        "min_robust_accuracy": 0.5,
        "samples": 60,
        "pgd_steps": 5,
        "apgd_steps": 5,
    },
    "backdoor": {"stand_in_models": 1, "images": 50, "steps": 10, "ratio_no_production": 0.01},
    "golden_regression": {"alpha": 0.01},
    "advisory": {"enabled": False},
}


def export(tmp_path: Path, model_py: str | None = None, train_py: str | None = None) -> Path:
    """A commit export: the example trainer, with hostile replacements where given."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "training", src / "training", ignore=shutil.ignore_patterns("__pycache__"))
    if model_py is not None:
        (src / "training" / "model.py").write_text(textwrap.dedent(model_py))
    if train_py is not None:
        (src / "training" / "train.py").write_text(textwrap.dedent(train_py))
    return src


def request(tmp_path, src: Path, model: Path, digits: Path, gates: list[str], **params) -> dict:
    return {
        "src": str(src),
        "model": str(model),
        "workdir": str(tmp_path / "work"),
        "train_dir": str(digits / "train"),
        "golden_dir": str(digits / "golden"),
        "threads": 1,
        "seed": 0,
        "timeout": 300,
        "training_command": ["{python}", "-m", "training.train"],
        "fork": True,
        "parallel": 1,
        "sandbox": {"mode": "bubblewrap", "bwrap": "bwrap", "memory_mb": 8192, "output_mb": 2048},
        "params": {**FAST, **params},
        "gates": gates,
    }


def results(out: dict) -> dict:
    return {r["gate"]: r for r in out["results"]}


PATCHING_MODEL = '''
    """Hostile model code: on import it tries to turn every gate into PASS, as it could in the old in-process design."""
    import sys, types
    import torch
    from torch import nn

    class _Pass:
        verdict = "pass"
    for name, mod in list(sys.modules.items()):
        if name.startswith(("gates", "flows", "airlock")) and isinstance(mod, types.ModuleType):
            for attr in ("check", "verify", "evaluate", "accuracy"):
                if hasattr(mod, attr):
                    setattr(mod, attr, lambda *a, **k: _Pass())
    sys.modules["gates.evaluation"] = types.ModuleType("gates.evaluation")   # and replace the module outright

    from training._real_model import build_model as _real

    class Saboteur(nn.Module):
        """The trained weights load, but every answer is class 0: a sabotaged model."""
        def __init__(self, hp):
            super().__init__()
            self.inner = _real(hp)
            self.penultimate = self.inner.penultimate
        def load_state_dict(self, state, *a, **k):
            return self.inner.load_state_dict(state, *a, **k)
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, 0] = 10.0
            return out + 0 * self.inner(x)

    def build_model(hp):
        return Saboteur(hp)
'''


def test_model_code_that_patches_the_gates_changes_no_verdict(tmp_path, trained, digits):
    src = export(tmp_path, PATCHING_MODEL)
    shutil.copy2(ROOT / "training" / "model.py", src / "training" / "_real_model.py")
    out = _evaluate.run(request(tmp_path, src, trained, digits, ["evaluation"]))
    ev = results(out)["evaluation"]
    assert ev["verdict"] == "fail", ev
    assert "test accuracy 0.1" in ev["reason"] and "< 0.9" in ev["reason"]


def test_a_model_that_answers_the_wrong_shape_is_refused_with_the_reason(tmp_path, trained, digits):
    src = export(
        tmp_path,
        """
        from torch import nn
        from training._real_model import build_model as _real

        class ThreeClasses(nn.Module):
            def __init__(self, hp):
                super().__init__()
                self.inner = _real(hp)
            def load_state_dict(self, s, *a, **k):
                return self.inner.load_state_dict(s, *a, **k)
            def forward(self, x):
                return self.inner(x)[:, :3]

        def build_model(hp):
            return ThreeClasses(hp)
    """,
    )
    shutil.copy2(ROOT / "training" / "model.py", src / "training" / "_real_model.py")
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        _evaluate.main(
            [_write(tmp_path, request(tmp_path, src, trained, digits, ["evaluation"])), str(tmp_path / "out.json")]
        )
    r = json.loads((tmp_path / "out.json").read_text())["results"]
    assert len(r) == 1 and r[0]["verdict"] == "fail"
    assert (
        "cannot evaluate the model" in r[0]["reason"] and "expected [" in r[0]["reason"] and ", 10]" in r[0]["reason"]
    )


def _write(tmp_path: Path, req: dict) -> str:
    p = tmp_path / "request.json"
    p.write_text(json.dumps(req))
    return str(p)


def test_model_code_cannot_reach_keys_or_the_environment(tmp_path, trained, digits, monkeypatch, keys):
    monkeypatch.setenv("AIRLOCK_SIGNING_KEY", str(keys.model_key))
    src = export(
        tmp_path,
        f"""
        import glob, os
        from training._real_model import build_model as _real
        seen = []
        for p in [{str(keys.model_key)!r}, {str(keys.approvers)!r}]:
            try:
                seen.append(open(p).read())
            except OSError as e:
                seen.append(type(e).__name__)
        for e in glob.glob("/proc/*/environ"):
            try:
                seen.append(open(e, "rb").read().decode(errors="replace"))
            except OSError:
                pass
        print("SEEN", seen, flush=True)      # into the evaluator's log: the one channel it has
        build_model = _real
    """,
    )
    shutil.copy2(ROOT / "training" / "model.py", src / "training" / "_real_model.py")
    lines: list[str] = []
    sb = Sandbox()
    job = sb.job("candidate model", ro={"src": src, "model": trained})
    meta = json.loads((trained / "training.json").read_text())
    with Oracle(job, on_line=lines.append) as o:
        m = o.load("candidate", job.path("model"), meta)
        x, _ = load_split(digits / "train", "test")
        assert m(torch.from_numpy(x[:4])).shape == (4, 10)
    seen = " ".join(lines)
    assert "SEEN" in seen and "FileNotFoundError" in seen
    assert "PRIVATE KEY" not in seen and "AIRLOCK_SIGNING_KEY" not in seen and "namespaces=" not in seen


def test_the_backdoor_stand_in_trains_in_the_sandbox(tmp_path, trained, digits, monkeypatch, keys):
    """The stand-in's trainer is team code too: no secret in its environment, no key on its filesystem."""
    monkeypatch.setenv("AIRLOCK_SIGNING_KEY", str(keys.model_key))
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    src = export(
        tmp_path,
        train_py=(ROOT / "training" / "train.py")
        .read_text()
        .replace(
            "def main(argv: list[str] | None = None) -> int:",
            "def main(argv: list[str] | None = None) -> int:\n"
            f"    import os, json; leak = {{'env': dict(os.environ), 'key': os.path.exists({str(keys.model_key)!r})}}\n"
            "    out = Path(sys.argv[sys.argv.index('--out') + 1]); out.mkdir(parents=True, exist_ok=True)\n"
            "    (out / 'leak.json').write_text(json.dumps(leak))",
            1,
        ),
    )
    two = {**FAST["backdoor"], "stand_in_models": 2}
    out = _evaluate.run(request(tmp_path, src, trained, digits, ["backdoor"], backdoor=two))
    bd = results(out)["backdoor"]
    assert bd["evidence"]["reference_kind"] == "golden-stand-in" and bd["evidence"]["reference"]["members"]
    seeds = sorted((tmp_path / "work" / "stand-in" / "trained").glob("seed-*"))
    assert [s.name for s in seeds] == [f"seed-{1234 + i}" for i in range(len(seeds))] and len(seeds) >= 2
    for seed in seeds:  # every stand-in training (forks of one sandboxed process): no secret, no key
        assert (seed / "model.safetensors").exists()
        leak = json.loads((seed / "leak.json").read_text())
        assert "AIRLOCK_SIGNING_KEY" not in leak["env"] and "PREFECT_API_KEY" not in leak["env"], leak["env"]
        assert leak["key"] is False and leak["env"]["HOME"] == "/tmp/home"


def test_the_oracle_answers_exactly_what_the_model_in_process_computes(digits):
    """Out of process, the same numbers: logits, input gradients and a whole PGD/APGD evaluation."""
    model, meta = F.clean_model(1234)
    out = Path(F._WORK) / "clean-1234" / "out"
    job = Sandbox().job("candidate model", ro={"src": ROOT, "model": out})
    x, y = F.digits()["test"]
    with Oracle(job) as o:
        remote = o.load("candidate", job.path("model"), meta)
        a = torch.from_numpy(x[:32]).requires_grad_(True)
        b = torch.from_numpy(x[:32]).requires_grad_(True)
        la, lb = model(a), remote(b)
        (ga,), (gb,) = torch.autograd.grad(la.square().sum(), a), torch.autograd.grad(lb.square().sum(), b)
        assert torch.equal(la.detach(), lb.detach()) and torch.equal(ga, gb)
        p = R.RobustnessParams(samples=60, epsilons=(0.05, 0.1))
        assert R.evaluate(model, meta, x, y, p)["robust_correct"] == R.evaluate(remote, meta, x, y, p)["robust_correct"]
        np.testing.assert_array_equal(remote.activations(x[:16], "penultimate").shape, (16, 64))
    with pytest.raises(OracleError, match="sandbox is gone|sandbox exited"):
        remote(torch.from_numpy(x[:2]))  # closed: a question to a dead oracle is an error, not an answer


def test_model_code_that_masks_its_gradients_is_refused_by_the_robustness_gate(tmp_path, trained, digits):
    """Hostile model code, in its sandbox, answers true logits but zero input gradients: PGD and APGD would find
    nothing and a fragile model would pass. The evaluator checks the answers against each other and refuses."""
    src = export(
        tmp_path,
        """
        import torch
        from training._real_model import build_model as _real

        class _Hide(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                return torch.zeros_like(g)

        class Masked(torch.nn.Module):
            def __init__(self, hp):
                super().__init__()
                self.inner = _real(hp)
                self.penultimate = self.inner.penultimate

            def load_state_dict(self, s, *a, **k):
                return self.inner.load_state_dict(s, *a, **k)

            def forward(self, x):
                return self.inner(_Hide.apply(x))

        def build_model(hp):
            return Masked(hp)
    """,
    )
    shutil.copy2(ROOT / "training" / "model.py", src / "training" / "_real_model.py")
    out = _evaluate.run(request(tmp_path, src, trained, digits, ["robustness"]))
    r = results(out)["robustness"]
    assert r["verdict"] == "fail" and r["code"] == "robustness.gradient_mismatch", r["reason"]
