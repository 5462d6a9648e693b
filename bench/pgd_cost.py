"""ART's PGD against a plain torch PGD loop: same model, same samples, same steps, one run.

    python3 -m bench.pgd_cost [--repeats 15] [--epsilon 0.1] [--steps 10]

Both attacks: L-inf, eps_step = eps/4, no random start, cross-entropy loss, clip to [0, 1], the 360-sample test
split in one batch (as the robustness gate runs it). Timings alternate ART / torch to share machine noise; the
ratio is of the medians. Also reports ART at its default batch size (32) and whether the adversarial examples are
identical.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F_

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as python3 bench/<name>.py

from airlock.classifiers import art_classifier
from tests import _model_fixtures as F


def torch_pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int, lo=0.0, hi=1.0):
    x0 = x.detach()
    xa = x0.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F_.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + step * g.sign()
        xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(lo, hi)
    return xa.detach()


def main(argv: list[str] | None = None) -> int:
    from art.attacks.evasion import ProjectedGradientDescent

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, meta = F.clean_model(1234)
    x, y = F.digits()["test"]
    clf = art_classifier(model, meta["input_shape"], meta["nb_classes"], meta["clip_values"])
    eps, step = args.epsilon, args.epsilon / 4
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def art_run(batch):
        attack = ProjectedGradientDescent(
            clf, eps=eps, eps_step=step, max_iter=args.steps, num_random_init=0, batch_size=batch, verbose=False
        )
        return attack.generate(x=x, y=y)

    # warm-up
    art_run(len(x))
    torch_pgd(model, xt, yt, eps, step, args.steps)
    t_art, t_torch, t_art32 = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = art_run(len(x))
        t_art.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = torch_pgd(model, xt, yt, eps, step, args.steps)
        t_torch.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        art_run(32)
        t_art32.append(time.perf_counter() - t0)
    b = b.numpy()
    max_diff = float(np.abs(a - b).max())
    with torch.no_grad():
        acc_art = float((model(torch.from_numpy(a)).argmax(1) == yt).float().mean())
        acc_torch = float((model(torch.from_numpy(b)).argmax(1) == yt).float().mean())
    m_art, m_torch, m_art32 = (statistics.median(t) for t in (t_art, t_torch, t_art32))
    print(
        f"PGD L-inf eps={eps} step={step} steps={args.steps}, n={len(x)}, {args.repeats} repeats, 1 thread, "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )
    print("| implementation | median s | min s | robust acc |")
    print("|---|---|---|---|")
    print(f"| plain torch loop (batch {len(x)}) | {m_torch:.4f} | {min(t_torch):.4f} | {acc_torch:.3f} |")
    print(f"| ART ProjectedGradientDescent (batch {len(x)}) | {m_art:.4f} | {min(t_art):.4f} | {acc_art:.3f} |")
    print(f"| ART ProjectedGradientDescent (batch 32, ART default) | {m_art32:.4f} | {min(t_art32):.4f} | |")
    print(
        f"ratio ART/torch (medians, batch {len(x)}): {m_art / m_torch:.2f}x; batch 32: {m_art32 / m_torch:.2f}x; "
        f"max |x_art - x_torch| = {max_diff:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
