"""Backdoor gate: reverse-engineer, per class, the smallest trigger that flips inputs to that class (Neural Cleanse).

Attack it blocks: data poisoning with a backdoor (BadNets). Whoever controls a small part of the training data
stamps a trigger on a few images and relabels them to a target class. The model keeps its clean accuracy (measured:
0.977 -> 0.974-0.979 on the golden set), so accuracy gates cannot see it, but the trigger turns any input into the
target class. A backdoored class is reachable from every other class with a much SMALLER input change than before:
Neural Cleanse (Wang et al., IEEE S&P 2019) finds, for each class, the smallest mask m and pattern p such that
``(1 - m) * x + m * p`` is classified as that class, and the L1 norm of m measures how close the class is.

Decision, differential: an absolute anomaly index false-alarms on small clean models (clean models reach 2.0-2.9
against the paper's threshold of 2), so the gate compares each class's trigger size with the same class in a
REFERENCE model - the production model (its norms are cached at promotion) - and fails when some class shrank below
``ratio`` times the reference. The ratio is calibrated on clean and poisoned retrains (see BENCHMARKS.md).

No production model yet: the reference ("golden stand-in") is the per-class MEAN of the norms of
``stand_in_models`` (5) models trained by the SAME trainer and hyperparameters on the known-clean golden set, with
trainer seeds config.seed, config.seed + 1, ... (:func:`stand_in_reference` = :func:`train_reference` +
:func:`reverse_engineer` + :func:`combine`). They have seen no attacker-controlled sample, so they cannot carry the
backdoor. Trained on 300 instead of 1,137 samples their triggers differ a little in overall size - the decision
normalises each model's norms by their own median (see :func:`relative_ratios`) - and one such model is a noisy
reference, hence the average of five and a separately calibrated ``ratio_no_production``.

Split in two so that production's norms can be cached and reused:
* :func:`reverse_engineer` (model -> per-class norms, ~seconds);
* :func:`check` (candidate norms, reference norms -> GateResult, instant).

ART's NeuralCleanse is Keras-only (NotImplementedError for PyTorch, ART issue #871): this is a torch version.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from airlock.stats import torch_threads
from gates._result import GateResult

GATE = "backdoor"


@dataclass(frozen=True)
class BackdoorParams:
    # Fail when some class's (median-normalised) trigger norm falls below ``ratio`` x the reference's. Calibrated
    # (BENCHMARKS.md, 10 seeds each, 32 images per class per step): clean retrains' smallest ratio 0.823-0.927,
    # 1%-poisoned 0.411-0.680 -> the middle of the gap.
    ratio: float = 0.75
    # Same, when the reference is the golden-set stand-in (no production model yet): clean 0.751-0.847,
    # 1%-poisoned 0.343-0.641 -> the middle of the gap.
    ratio_no_production: float = 0.70
    # The stand-in averages the norms of this many golden-set models (trainer seeds config.seed, +1, ...): one
    # 300-sample model is a noisy reference (calibration: clean/poisoned gap 0.03-0.09 with one, 0.08-0.11 with five).
    stand_in_models: int = 5
    # Neural Cleanse optimisation. Norms are comparable only between runs with the same values here and the same
    # images: :func:`check` refuses to compare otherwise.
    images: int = 200
    steps: int = 150
    # Images per class per step. 32 costs half of 64 and separated clean from poisoned retrains as well in the same
    # calibration run (gap at 1%: 0.680-0.823 vs 0.688-0.830 against production, 0.641-0.751 vs 0.672-0.753 against
    # the stand-in); a success of 0.99 still means every image of the batch flipped.
    batch_size: int = 32
    learning_rate: float = 0.1
    init_cost: float = 1e-3
    cost_multiplier: float = 1.5
    patience: int = 5
    success_threshold: float = 0.99
    seed: int = 0
    threads: int = 1

    def optimisation(self) -> dict[str, Any]:
        """The parameters that change the norms (not the decision ratios)."""
        d = asdict(self)
        for k in ("ratio", "ratio_no_production", "stand_in_models"):
            d.pop(k)
        return d


def _fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def _select(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic, class-balanced subset of at most n images."""
    if len(x) <= n:
        return x, y
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    classes = np.unique(y)
    per = int(np.ceil(n / len(classes)))
    picked = np.concatenate([order[y[order] == c][:per] for c in classes])
    picked = np.sort(picked)[:n] if len(picked) > n else np.sort(picked)
    return x[picked], y[picked]


def reverse_engineer(
    model, meta: dict, x: np.ndarray, y: np.ndarray, params: BackdoorParams = BackdoorParams()
) -> dict[str, Any]:
    """Neural Cleanse in torch: per class, the L1 norm of the smallest mask that flips other-class images to it.

    ``x``, ``y`` are CLEAN images (the golden set); the same images and params must be used for the candidate and
    the reference. All classes are optimised at once (independent masks, one summed loss: Adam is per-parameter, so
    the classes do not interact). Returns a JSON-serialisable dict::

        {"norms": [float per class], "attack_success": [float per class], "reached": [bool per class],
         "images_sha256": str, "images": int, "params": {...}, "seconds": float}

    ``norms[k]`` is the smallest mask L1 norm seen with attack success >= ``success_threshold`` (if never reached,
    the final mask's norm and ``reached[k] = False``).
    """
    import torch
    import torch.nn.functional as F

    nb_classes = int(meta["nb_classes"])
    lo, hi = (float(v) for v in meta.get("clip_values", (0.0, 1.0)))
    xs, ys = _select(np.asarray(x, np.float32), np.asarray(y, np.int64), params.images, params.seed)
    t0 = time.perf_counter()
    model.eval()
    # Every random draw is from ``gen``: no global seed is set, so the golden stand-in's models can be reverse-
    # engineered in a thread beside the other gates without changing their random streams (or they its norms).
    with torch_threads(params.threads):
        X = torch.from_numpy(np.ascontiguousarray(xs))
        Y = torch.from_numpy(np.ascontiguousarray(ys))
        _, c, h, w = X.shape
        K = nb_classes
        gen = torch.Generator().manual_seed(params.seed)
        # tanh parametrisation as in the paper: mask in [0, 1] (one per pixel), pattern in the clip range.
        mask_p = (torch.rand(K, 1, h, w, generator=gen) * 0.2 - 2.0).requires_grad_(True)  # mask ~ 0.02
        pat_p = (torch.rand(K, c, h, w, generator=gen) * 2 - 1).requires_grad_(True)
        opt = torch.optim.Adam([mask_p, pat_p], lr=params.learning_rate, betas=(0.5, 0.9))
        cost = torch.zeros(K)  # 0 until a class first reaches the success threshold (as in the paper)
        cost_set = torch.zeros(K, dtype=torch.bool)
        up = torch.zeros(K)
        down = torch.zeros(K)
        best = torch.full((K,), float("inf"))
        targets = torch.arange(K).repeat_interleave(params.batch_size)
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            last_success = torch.zeros(K)
            for _step in range(params.steps):
                # Per class, a batch of images of OTHER classes.
                batch = []
                for k in range(K):
                    pool = torch.nonzero(Y != k).flatten()
                    batch.append(pool[torch.randint(len(pool), (params.batch_size,), generator=gen)])
                xb = X[torch.stack(batch)]  # (K, B, c, h, w)
                mask = (torch.tanh(mask_p) + 1) / 2
                pattern = lo + (torch.tanh(pat_p) + 1) / 2 * (hi - lo)
                xa = (1 - mask[:, None]) * xb + (mask * pattern)[:, None]
                logits = model(xa.reshape(-1, c, h, w))
                ce = F.cross_entropy(logits, targets, reduction="none").reshape(K, -1).mean(1)
                l1 = mask.reshape(K, -1).sum(1)
                loss = (ce + cost * l1).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    success = (logits.argmax(1) == targets).float().reshape(K, -1).mean(1)
                    last_success = success
                    ok = success >= params.success_threshold
                    best = torch.where(ok & (l1 < best), l1.detach(), best)
                    # Adaptive cost (Neural Cleanse): raise it while the trigger works, lower it when it stops.
                    first = ok & ~cost_set
                    cost = torch.where(first, torch.full_like(cost, params.init_cost), cost)
                    cost_set |= first
                    up = torch.where(cost_set & ok, up + 1, torch.zeros_like(up))
                    down = torch.where(cost_set & ~ok, down + 1, torch.zeros_like(down))
                    raise_ = up >= params.patience
                    lower = down >= params.patience
                    cost = torch.where(raise_, cost * params.cost_multiplier, cost)
                    cost = torch.where(lower, cost / params.cost_multiplier**1.5, cost)
                    up = torch.where(raise_, torch.zeros_like(up), up)
                    down = torch.where(lower, torch.zeros_like(down), down)
            final = ((torch.tanh(mask_p) + 1) / 2).reshape(K, -1).sum(1).detach()
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        reached = torch.isfinite(best)
        norms = torch.where(reached, best, final)
    return {
        "norms": [round(float(v), 6) for v in norms],
        "attack_success": [round(float(v), 4) for v in last_success],
        "reached": [bool(v) for v in reached],
        "images_sha256": _fingerprint(xs, ys),
        "images": int(len(xs)),
        "params": params.optimisation(),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def anomaly_index(norms) -> list[float]:
    """Neural Cleanse's MAD anomaly index of each class (reported only: clean small models reach 2-3)."""
    v = np.asarray(norms, dtype=float)
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med))
    return [float((med - n) / mad) if mad > 0 else 0.0 for n in v]


def relative_ratios(candidate_norms, reference_norms) -> list[float]:
    """Per class: (candidate norm / candidate median) / (reference norm / reference median)."""
    c = np.asarray(candidate_norms, dtype=float)
    r = np.asarray(reference_norms, dtype=float)
    return [float(v) for v in (c / np.median(c)) / (r / np.median(r))]


def check(
    candidate: dict[str, Any],
    reference: dict[str, Any] | None,
    params: BackdoorParams = BackdoorParams(),
    reference_kind: str | None = None,
) -> GateResult:
    """Compare the candidate's per-class trigger norms with the reference's.

    ``candidate`` and ``reference`` are :func:`reverse_engineer` outputs (the reference may come from the registry's
    cache) or, for the stand-in, a :func:`stand_in_reference` / :func:`combine` output. ``reference_kind`` is
    ``"production"`` or ``"golden-stand-in"`` (selects ``ratio`` or ``ratio_no_production``); by default it is
    ``reference["kind"]`` if present, else ``"production"``. ``reference=None`` FAILS: the gate never passes
    without a reference; when nothing is in production, use :func:`stand_in_reference`.
    """
    if reference_kind is None:
        reference_kind = (reference or {}).get("kind", "production")
    metrics: dict[str, float] = {}
    evidence: dict[str, Any] = {"candidate": candidate, "reference": reference, "reference_kind": reference_kind}
    if reference is None:
        # Fail-closed: a backdoor gate with nothing to compare against would silently pass a poisoned first model.
        return GateResult.fail(
            GATE,
            "no reference trigger sizes: compute them on a golden-set reference "
            "(gates.backdoor.train_reference) or on the production model, then rerun",
            metrics=metrics,
            evidence=evidence,
            code="backdoor.no_reference",
        )
    # Norms computed on other images or with other optimisation params are not comparable (e.g. a stale cache).
    for key in ("images_sha256", "params"):
        if candidate.get(key) != reference.get(key):
            return GateResult.fail(
                GATE,
                f"reference trigger sizes were computed with a different {key.replace('_', ' ')} "
                "than the candidate's: recompute the reference norms with the same golden set "
                "and BackdoorParams",
                metrics=metrics,
                evidence=evidence,
                code="backdoor.incomparable_reference",
            )
    cn, rn = candidate["norms"], reference["norms"]
    if len(cn) != len(rn):
        return GateResult.fail(
            GATE,
            f"candidate has {len(cn)} classes, reference {len(rn)}: compare models of the same task",
            metrics=metrics,
            evidence=evidence,
            code="backdoor.class_mismatch",
        )
    threshold = params.ratio if reference_kind == "production" else params.ratio_no_production
    ratios = relative_ratios(cn, rn)
    k = int(np.argmin(ratios))
    ai = anomaly_index(cn)
    metrics.update(
        {
            "min_trigger_ratio": ratios[k],
            "min_trigger_ratio_class": float(k),
            "threshold": float(threshold),
            "candidate_min_norm": float(min(cn)),
            "candidate_median_norm": float(np.median(cn)),
            "reference_median_norm": float(np.median(rn)),
            "candidate_max_anomaly_index": float(max(ai)),
        }
    )
    evidence["ratios"] = [round(r, 4) for r in ratios]
    evidence["anomaly_index"] = [round(a, 3) for a in ai]
    flagged = [i for i, r in enumerate(ratios) if r < threshold]
    # Backdoor (BadNets-style data poisoning): a class became reachable with a much smaller trigger than in the
    # reference model.
    if flagged:
        return GateResult.fail(
            GATE,
            f"class {k}'s reverse-engineered trigger shrank to {ratios[k]:.2f}x the {reference_kind} reference "
            f"(threshold {threshold}): possible backdoor to class(es) {flagged} - audit the training samples "
            "recently labelled as those classes (see the spectral-signature report) before retrying",
            metrics=metrics,
            evidence=evidence,
            code="backdoor.trigger_shrank",
        )
    return GateResult.ok(
        GATE,
        f"smallest trigger ratio {ratios[k]:.2f}x (class {k}) vs the {reference_kind} reference, threshold {threshold}",
        metrics=metrics,
        evidence=evidence,
    )


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Average several :func:`reverse_engineer` results (the golden stand-in's models) into one reference."""
    if not results:
        raise ValueError("no reference results to combine")
    for r in results[1:]:
        if r["images_sha256"] != results[0]["images_sha256"] or r["params"] != results[0]["params"]:
            raise ValueError("reference results were computed on different images or params")
    out = dict(results[0])
    out["norms"] = [round(float(v), 6) for v in np.mean([r["norms"] for r in results], axis=0)]
    out["attack_success"] = [round(float(v), 4) for v in np.mean([r["attack_success"] for r in results], axis=0)]
    out["reached"] = [bool(all(r["reached"][k] for r in results)) for k in range(len(out["norms"]))]
    out["members"] = [r["norms"] for r in results]
    out["seconds"] = round(sum(r["seconds"] for r in results), 3)
    return out


def _default_config(trainer_module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(trainer_module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"cannot find the trainer module {trainer_module}")
    return Path(spec.origin).with_name("config.toml")


def train_reference(
    golden_x: np.ndarray,
    golden_y: np.ndarray,
    out_dir: Path,
    config: Path | None = None,
    models: int = BackdoorParams.stand_in_models,
    trainer_module: str = "training.train",
    timeout: float = 600.0,
    trainer: Callable[[Path, Path, Path], None] | None = None,
    parallel: int = 1,
) -> list[Path]:
    """Train the no-production stand-in: the project's trainer, same hyperparameters, on the known-clean golden set.

    Writes ``golden`` as the ``train`` split of a dataset directory and runs, for i in 0..models-1, the trainer with
    ``--data DIR --out out_dir/trained/seed-<s> --config CFG`` where CFG is ``config`` (default: the trainer's config.toml)
    with ``seed = config.seed + i``. ``trainer(data_dir, out, cfg)`` runs one training; by default
    ``python -m <trainer_module>`` in the sandbox (:mod:`airlock.sandbox`): the trainer is team code. Separate
    processes, because the trainer pins threads and deterministic algorithms process-wide, so ``parallel`` of them
    may run at once without changing a weight. Returns the output directories (model.safetensors + training.json).
    """
    from concurrent.futures import ThreadPoolExecutor

    run, jobs = _stand_in_jobs(golden_x, golden_y, out_dir, config, models, trainer_module, timeout, trainer)
    with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:
        for f in [pool.submit(run, *j) for j in jobs]:
            f.result()
    return [out for _, out, _ in jobs]


def _stand_in_jobs(
    golden_x: np.ndarray,
    golden_y: np.ndarray,
    out_dir: Path,
    config: Path | None,
    models: int,
    trainer_module: str,
    timeout: float,
    trainer: Callable[[Path, Path, Path], None] | None,
) -> tuple[Callable[[Path, Path, Path], None], list[tuple[Path, Path, Path]]]:
    """The golden set as a ``train`` split, one config per seed, and the trainer: (run, [(data, out, cfg), ...])."""
    import tomllib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = Path(config) if config is not None else _default_config(trainer_module)
    hp = tomllib.loads(config.read_text())
    root = _module_root(trainer_module)
    if trainer is None and root is None:
        raise RuntimeError(f"cannot find the trainer module {trainer_module}")
    run = trainer or SandboxedTrainer(["{python}", "-m", trainer_module], Path(str(root)), timeout=timeout)
    data = out_dir / "data"
    data.mkdir(exist_ok=True)
    np.save(data / "train_x.npy", np.asarray(golden_x, dtype=np.float32), allow_pickle=False)
    np.save(data / "train_y.npy", np.asarray(golden_y, dtype=np.int64), allow_pickle=False)
    jobs = []
    for i in range(int(models)):
        seed = int(hp.get("seed", 0)) + i
        cfg = data / f"config-{seed}.toml"
        cfg.write_text("".join(f"{k} = {json.dumps(seed if k == 'seed' else v)}\n" for k, v in hp.items()))
        jobs.append((data, out_dir / "trained" / f"seed-{seed}", cfg))
    return run, jobs


class SandboxedTrainer:
    """A :func:`train_reference` trainer: ``command`` (the policy's training command) run from the export ``src``
    in the sandbox (airlock/sandbox.py), like any training: the stand-in's trainer is team code too.

    With ``fork`` and a ``{python} -m MODULE`` command, the trainings are forks of one sandboxed process that
    imported the trainer's dependencies once (airlock/forking.py): the same trainings, byte for byte, without a new
    interpreter importing torch for each. Use it as a context manager (or call :meth:`close`) to end that process."""

    def __init__(
        self,
        command: list[str],
        src: Path,
        sandbox: Any = None,
        timeout: float = 600.0,
        threads: int = 1,
        fork: bool = False,
    ) -> None:
        from airlock.forking import forkable
        from airlock.sandbox import Sandbox

        self.command, self.src, self.timeout, self.threads = list(command), Path(src), timeout, threads
        self.box = sandbox or Sandbox()
        self.module = forkable(self.command) if fork else None
        self._server: Any = None
        self._binds: tuple[Path, Path] | None = None  # the fork server's data and seeds' directory, once started
        self._lock = threading.Lock()

    def _job(self, data: Path, out: Path) -> Any:
        return self.box.job(
            "stand-in trainer",
            ro={"src": self.src, "data": data},
            rw={"out": out},
            cwd="src",
            timeout=self.timeout,
            threads=self.threads,
        )

    def __call__(self, data: Path, out: Path, cfg: Path) -> None:
        if self.module is None:  # a new sandboxed process for each training
            job = self._job(data, out)
            job.run([*self.command, *self._args(job, job.path("out"), cfg)])
            return
        from airlock.forking import ForkTrainer

        # One fork server for every seed. Its binds: the shared data (read-only) and the seeds' parent directory, which
        # holds the seeds' outputs alone (the data and the copies Airlock judges live beside it, out of reach).
        with self._lock:
            if self._server is None:
                self._server = ForkTrainer(self._job(data, out.parent), self.module)
                self._binds = (Path(data), Path(out).parent)
        if (Path(data), Path(out).parent) != self._binds:
            raise ValueError("a fork trainer trains from one data directory into one output directory")
        job = self._server.job
        self._server.run(self._args(job, f"{job.path('out')}/{out.name}", cfg))

    @staticmethod
    def _args(job: Any, out: str, cfg: Path) -> list[str]:
        return ["--data", job.path("data"), "--out", out, "--config", f"{job.path('data')}/{cfg.name}"]

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()

    def __enter__(self) -> SandboxedTrainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_trained(out_dir: Path):
    """Load a trainer output directory (model.safetensors + training.json) as an eval-mode module, using the
    ``architecture`` ("module:function") recorded in training.json. Returns (model, meta)."""
    import importlib

    from safetensors.torch import load_file

    meta = json.loads((Path(out_dir) / "training.json").read_text())
    module, func = meta["architecture"].split(":")
    model = getattr(importlib.import_module(module), func)(meta["hyperparameters"])
    model.load_state_dict(load_file(str(Path(out_dir) / "model.safetensors")))
    model.eval()
    return model, meta


def stand_in_reference(
    golden_x: np.ndarray,
    golden_y: np.ndarray,
    workdir: Path,
    params: BackdoorParams = BackdoorParams(),
    config: Path | None = None,
    loader=load_trained,
    trainer: Callable[[Path, Path, Path], None] | None = None,
    parallel: int = 1,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """All of the no-production path: train the stand-in models (:func:`train_reference`), ``loader`` +
    :func:`reverse_engineer` on the golden set, :func:`combine`. Use the result as ``reference`` with
    ``reference_kind="golden-stand-in"``.

    Up to ``parallel`` trainers run at once, and as each model is trained one of ``parallel`` other workers loads
    and reverse-engineers it (``loader`` is called from those threads), so the trainings never wait behind Neural
    Cleanse and the last model's is the only step left alone at the end. The result is the same as one model after
    the other: each norm depends on its model alone, combined in seed order. ``stop()`` true abandons the work
    between steps (the caller has failed already)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    run, jobs = _stand_in_jobs(
        golden_x, golden_y, workdir, config, params.stand_in_models, "training.train", 600.0, trainer
    )

    def train(job: tuple[Path, Path, Path]) -> Path:
        if stop():
            raise RuntimeError("stand-in abandoned")
        run(*job)
        return job[1]

    def judge(trained: Future[Path]) -> dict[str, Any]:
        out = trained.result()
        if stop():
            raise RuntimeError("stand-in abandoned")
        model, meta = loader(out)
        return reverse_engineer(model, meta, golden_x, golden_y, params)

    workers = max(1, int(parallel))
    with ThreadPoolExecutor(max_workers=workers) as trainers, ThreadPoolExecutor(max_workers=workers) as judges:
        trained = [trainers.submit(train, j) for j in jobs]
        futures = [judges.submit(judge, t) for t in trained]
        try:
            results = [f.result() for f in futures]
        finally:
            for pending in futures:
                pending.cancel()
            for waiting in trained:
                waiting.cancel()
    ref = combine(results)
    ref["kind"] = "golden-stand-in"
    return ref


def _module_root(module: str) -> str | None:
    import importlib.util

    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


def dumps(result: dict[str, Any]) -> str:
    """Canonical JSON for caching a :func:`reverse_engineer` result (e.g. production's, at promotion)."""
    return json.dumps(result, sort_keys=True)
