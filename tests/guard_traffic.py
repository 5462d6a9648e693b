"""Simulated clients of the inference app, for the guard's tests (tests/test_serve.py) and its benchmark
(bench/runtime_guard.py): benign, and each attack the guard's detectors exist for."""

from __future__ import annotations

import httpx
import numpy as np


class Traffic:
    """Clients sending through the real app (in process, ASGI), each from its own address."""

    def __init__(self, guard, api: dict[str, str]) -> None:
        self.guard, self.api = guard, api
        self._clients: dict[str, httpx.AsyncClient] = {}

    def client(self, name: str, ip: str) -> httpx.AsyncClient:
        if name not in self._clients:
            transport = httpx.ASGITransport(app=self.guard, client=(ip, 40000))
            self._clients[name] = httpx.AsyncClient(transport=transport, base_url="http://airlock")
        return self._clients[name]

    async def send(self, name: str, x: np.ndarray, ip: str | None = None, key: str | None = None) -> httpx.Response:
        ip = ip or f"10.{sum(map(ord, name)) % 200}.{len(name) % 97}.7"
        return await self.client(name, ip).post(
            "/v1/predict",
            json={"inputs": np.asarray(x, dtype=float).round(4).tolist()},
            headers={"authorization": f"Bearer {key or self.api[name]}"},
        )


def benign(pool: np.ndarray, n: int, rng, jitter: float = 0.02) -> np.ndarray:
    """Natural digits, drawn with replacement, jittered."""
    x = pool[rng.integers(len(pool), size=n)]
    return np.clip(x + rng.normal(0, jitter, x.shape), 0, 1) if jitter else x


def noise(n: int, rng, shape=(1, 8, 8)) -> np.ndarray:
    return rng.uniform(0, 1, size=(n, *shape))


def knockoff(n: int, rng) -> np.ndarray:
    """Natural images from another domain (scikit-learn's bundled photographs), as 8x8 grey patches."""
    from sklearn.datasets import load_sample_images

    imgs = [im.mean(2) / 255.0 for im in load_sample_images().images]
    corners = rng.integers(0, 350, size=(n, 2))
    return np.asarray([imgs[k % 2][r : r + 64 : 8, c : c + 64 : 8] for k, (r, c) in enumerate(corners)])[:, None]


def jbda(pool: np.ndarray, answer, n: int, rng, lam: float = 0.1, random_targets: bool = False) -> np.ndarray:
    """Jacobian-based dataset augmentation (Papernot et al.) with a linear substitute trained on the victim's
    labels; with ``random_targets``, each step moves towards a random other class (JBDA-RT)."""
    from sklearn.linear_model import LogisticRegression

    shape = pool.shape[1:]
    xs = pool[rng.choice(len(pool), size=20, replace=False)].reshape(20, -1)
    ys = list(answer(xs.reshape(-1, *shape)))
    while len(xs) < n:
        sub = LogisticRegression(max_iter=200).fit(xs, ys) if len(set(ys)) > 1 else None
        new = []
        for x, y in zip(xs[-20:], ys[-20:]):
            if sub is None:
                g = rng.standard_normal(x.shape)
            else:
                classes = list(sub.classes_)
                target = y
                if random_targets and len(classes) > 1:
                    target = rng.choice([c for c in classes if c != y])
                w = sub.coef_
                p = sub.predict_proba(x[None])[0]
                k = classes.index(target) if target in classes else 0
                g = (w[k] - p @ w) if w.shape[0] > 1 else w[0]  # towards class k
            new.append(np.clip(x + lam * np.sign(g), 0, 1))
        arr = np.asarray(new)
        xs = np.concatenate([xs, arr])
        ys += list(answer(arr.reshape(-1, *shape)))
    return xs[:n].reshape(-1, *shape)


def boundary(pool: np.ndarray, n: int, rng) -> np.ndarray:
    """A walk towards the boundary between two digits, then around it (HopSkipJump-like)."""
    a, b = pool[rng.permutation(len(pool))[: n // 3 + 1]], pool[rng.permutation(len(pool))[: n // 3 + 1]]
    out = []
    for xa, xb in zip(a, b):
        for s in (0.5, 0.45, 0.55):
            out.append(np.clip((1 - s) * xa + s * xb + rng.normal(0, 0.01, xa.shape), 0, 1))
    return np.asarray(out[:n])


def drifted(pool: np.ndarray, rng) -> np.ndarray:
    """One natural digit as a changed camera would show it to everyone: rotated, contrast reduced."""
    x = pool[rng.integers(len(pool))]
    return np.clip(np.rot90(x, 1, axes=(1, 2)) * 0.8 + 0.1, 0, 1)


async def population_drift(t: Traffic, pool: np.ndarray, rng, clients: int = 20, each: int = 40) -> None:
    """Every benign client's data changes at once."""
    import asyncio

    async def client(i: int):
        for _ in range(each):
            r = await t.send(f"benign-{i}", drifted(pool, rng)[None])
            assert r.status_code == 200, r.text

    await asyncio.gather(*[client(i) for i in range(clients)])


class Serving:
    """`airlock serve` in its own process group, until the with block ends; ``base`` once /healthz answers."""

    def __init__(self, cfg, port: int, log, *extra: str, timeout: float = 180) -> None:
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        self.log_path, self.base, self.timeout = log, f"http://127.0.0.1:{port}", timeout
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--config", str(cfg), "--port", str(port), *extra],
            cwd=root, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def __enter__(self) -> Serving:
        import time

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(f"airlock serve did not start: {open(self.log_path).read()[-3000:]}")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        import os

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
        self.proc.wait(30)
        self._log.close()
