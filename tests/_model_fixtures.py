"""Small trained models shared by the model-gate tests and benchmarks (real torch, the project's own trainer).

Models are trained in-process with ``training.train.main`` (the same code as ``python -m training.train``) and
memoised for the whole process, so every test module that asks for the same model gets the same object without
retraining. Nothing here is a pytest fixture: test modules wrap these functions in their own fixtures.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import shutil
import tempfile
import tomllib
from pathlib import Path

import numpy as np

from airlock.datasets import load_split, write_digits

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "training" / "config.toml"
TARGET = 0  # backdoor target class used throughout the tests and benchmarks

_WORK = Path(tempfile.mkdtemp(prefix="airlock-model-gates-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)


@functools.cache
def digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The demo splits: train (1,137), test (360) and the known-clean golden set (300)."""
    train_dir, golden_dir = _WORK / "data", _WORK / "golden"
    write_digits(train_dir, golden_dir)
    return {
        "train": load_split(train_dir, "train"),
        "test": load_split(train_dir, "test"),
        "golden": load_split(golden_dir, "golden"),
    }


def load_model(out_dir: Path):
    """Load a trainer output directory (model.safetensors + training.json) into an eval-mode module."""
    from safetensors.torch import load_file

    from training.model import build_model

    meta = json.loads((Path(out_dir) / "training.json").read_text())
    model = build_model(meta["hyperparameters"])
    model.load_state_dict(load_file(str(Path(out_dir) / "model.safetensors")))
    model.eval()
    return model, meta


def train_arrays(x: np.ndarray, y: np.ndarray, name: str, seed: int = 1234, **overrides):
    """Train the example model on (x, y) with the project's trainer; returns (model, meta)."""
    import torch

    from training import train as trainer

    data, out = _WORK / name / "data", _WORK / name / "out"
    if out.exists():
        shutil.rmtree(out)
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "train_x.npy", np.asarray(x, dtype=np.float32), allow_pickle=False)
    np.save(data / "train_y.npy", np.asarray(y, dtype=np.int64), allow_pickle=False)
    hp = tomllib.loads(BASE_CONFIG.read_text())
    hp.update(seed=seed, **overrides)
    cfg = _WORK / name / "config.toml"
    cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in hp.items()))
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.main(["--data", str(data), "--out", str(out), "--config", str(cfg)])
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    return load_model(out)


@functools.cache
def clean_model(seed: int = 1234):
    """A clean retrain of the demo data; seed 1234 is the trainer's default and stands for 'production'."""
    x, y = digits()["train"]
    return train_arrays(x, y, f"clean-{seed}", seed=seed)


@functools.cache
def poisoned_model(seed: int = 1, fraction: float = 0.01, shape: str = "corner", target: int = TARGET):
    """A retrain on data where ``fraction`` of the samples carry a trigger relabelled to ``target``."""
    from tests.poison import poison

    x, y = digits()["train"]
    p = poison(x, y, fraction=fraction, target=target, shape=shape, seed=seed)
    model, meta = train_arrays(p.x, p.y, f"poisoned-{seed}-{fraction}-{shape}-{target}", seed=seed)
    return model, meta, p


@functools.cache
def adversarially_trained_model(epsilon: float = 0.1, seed: int = 1234):
    """The example architecture trained with FGSM + random start adversarial training (Wong et al. 2020), in plain
    torch: stands for a production model whose training code included adversarial training."""
    import torch
    from torch import nn

    from training.model import build_model

    x, y = digits()["train"]
    hp = tomllib.loads(BASE_CONFIG.read_text())
    hp["nb_classes"] = int(y.max()) + 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(hp)
    opt = torch.optim.Adam(model.parameters(), lr=hp["learning_rate"])
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(hp["epochs"]):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), hp["batch_size"]):
            idx = perm[i : i + hp["batch_size"]]
            xb, yb = xt[idx], yt[idx]
            delta = (torch.rand(xb.shape, generator=gen) * 2 - 1) * epsilon
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(model((xb + delta).clamp(0, 1)), yb), delta)
            delta = (delta + 1.25 * epsilon * grad.sign()).clamp(-epsilon, epsilon).detach()
            opt.zero_grad()
            loss = 0.5 * loss_fn(model(xb), yb) + 0.5 * loss_fn(model((xb + delta).clamp(0, 1)), yb)
            loss.backward()
            opt.step()
    model.eval()
    torch.set_num_threads(threads)
    meta = {
        "input_shape": list(x.shape[1:]),
        "nb_classes": hp["nb_classes"],
        "clip_values": [0.0, 1.0],
        "hyperparameters": hp,
    }
    return model, meta


def golden_stand_in_models(count: int = 5):
    """The stand-in's models, in-process: the trainer on the golden set with seeds 1234, 1235, ... (the same weights
    as ``gates.backdoor.train_reference`` produces in subprocesses; tests/test_backdoor.py checks that)."""
    return [_golden_model(1234 + i) for i in range(count)]


@functools.cache
def _golden_model(seed: int):
    x, y = digits()["golden"]
    return train_arrays(x, y, f"golden-{seed}", seed=seed)
