"""Train the example model: ``python -m training.train --data DIR --out DIR``.

Deterministic: fixed seeds, a fixed thread count and deterministic torch algorithms, so that the same commit and
the same data give the same weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from training.model import build_model

PREPROCESSING = [
    "load_digits 8x8 grey levels 0..16 scaled to [0,1] by /16 (at ingestion)",
    "reshape to (N, 1, 8, 8) float32",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train")
    ap.add_argument("--data", required=True, type=Path, help="dataset directory with train_x.npy and train_y.npy")
    ap.add_argument("--out", required=True, type=Path, help="empty output directory")
    ap.add_argument("--config", type=Path, default=Path(__file__).with_name("config.toml"))
    args = ap.parse_args(argv)

    hp = tomllib.loads(args.config.read_text())
    torch.manual_seed(hp["seed"])
    np.random.seed(hp["seed"])
    torch.set_num_threads(int(hp.get("threads", 1)))
    torch.use_deterministic_algorithms(True)

    x = np.load(args.data / "train_x.npy", allow_pickle=False).astype(np.float32)
    y = np.load(args.data / "train_y.npy", allow_pickle=False).astype(np.int64)
    nb_classes = int(y.max()) + 1
    hp["nb_classes"] = nb_classes
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    model = build_model(hp)
    opt = torch.optim.Adam(model.parameters(), lr=hp["learning_rate"])
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(hp["seed"])
    model.train()
    for epoch in range(hp["epochs"]):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), hp["batch_size"]):
            idx = perm[i : i + hp["batch_size"]]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"epoch {epoch + 1}/{hp['epochs']} loss {total / len(xt):.4f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "model.safetensors"))
    meta = {
        "trainer": "training.train (example digits CNN)",
        "architecture": "training.model:build_model",
        "hyperparameters": hp,
        "seed": hp["seed"],
        "preprocessing": PREPROCESSING,
        "input_shape": list(x.shape[1:]),
        "nb_classes": nb_classes,
        "clip_values": [0.0, 1.0],
        "train_samples": int(len(x)),
        "libraries": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    (args.out / "training.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out / 'model.safetensors'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
