"""The served model: production's, obtained only through verified loading, answering from its sandbox.

Security rules:
* The model is :func:`registry.loading.load`'s (signature, digest, approvals, ledger anchor, gate evidence, AIBOM);
  a model that does not verify stops the server before it listens (``airlock serve`` exits 1, one line).
* Its architecture is team code: it runs in the sandboxed oracle (airlock/oracle.py) from the training commit the
  signed provenance names, exported without running anything it configures, with the trainer's locked environment
  when the provenance records one. The server process never imports it.
* The reference data the guard calibrates on is the golden set the model was promoted against: its digest must be
  the one in the signed provenance (a swapped reference would move every threshold).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from pathlib import Path

import numpy as np

from airlock.errors import AirlockError, ServeError


class ServedModel:
    def __init__(self, pol, registry: str | Path | None = None) -> None:
        from airlock import gitutil
        from airlock.oracle import Oracle
        from airlock.sandbox import Sandbox
        from registry.loading import load

        self.verified = load("production", config=pol.source, registry=registry)
        self.digest = self.verified.digest
        self.metadata = self.verified.metadata
        self._tmp = tempfile.TemporaryDirectory(prefix="airlock-serve-")
        work = Path(self._tmp.name)
        model_dir = self.verified.export(work / "model")
        commit = (self.verified.provenance.get("commit") or {}).get("commit")
        if not isinstance(commit, str):
            raise ServeError("the production model's provenance names no training commit", "re-run the pipeline")
        src = work / "src"
        try:
            gitutil.export_commit(pol.repo.path, commit, src)
        except AirlockError as e:
            raise ServeError(f"cannot export the model's code (commit {commit[:12]}): {e.what}", e.hint) from None
        box = Sandbox.from_policy(pol)
        env = self._environment(pol, src)
        if env:
            import dataclasses

            box = dataclasses.replace(box, env=env)
        job = box.job("served model", ro={"src": src, "model": model_dir}, threads=1, timeout=60)
        self._oracle = Oracle(job, timeout=60)
        self._remote = self._oracle.load("production", job.path("model"), self.metadata)
        self._lock = threading.Lock()

    def _environment(self, pol, src: Path) -> str:
        """The trainer's locked environment the provenance records (its lock digest must match), or ''."""
        from airlock import trainer_env

        rec = ((self.verified.provenance.get("trainer") or {}).get("environment")) or {}
        lock = rec.get("lock")
        if not lock:
            return ""
        env = trainer_env.prepare(src / lock, lock, pol.training.environment_cache())
        if env.lock_digest != rec.get("lock_digest"):
            raise ServeError("the model's recorded trainer environment is not its commit's lock", "re-run the pipeline")
        return str(env.root)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the model's logits, asked of its sandbox (one request at a time)."""
        import torch

        with self._lock, torch.no_grad():
            logits = self._remote(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        z = logits - logits.max(1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(1, keepdims=True)).astype(np.float64)

    def reference(self, pol) -> np.ndarray:
        """The golden set's inputs, after checking its digest against the signed provenance."""
        from airlock.datasets import load_split
        from airlock.hashing import hash_tree

        want = ((self.verified.provenance.get("datasets") or {}).get("golden") or {}).get("root_digest")
        have = hash_tree(pol.data.golden.dir).root_digest
        if want != have:
            raise ServeError(
                f"the golden set in {pol.data.golden.dir} is not the one the model was promoted against "
                f"({have[:19]}… ≠ {str(want)[:19]}…)",
                "restore the golden set (the guard calibrates its detectors on it)",
            )
        x, _ = load_split(pol.data.golden.dir, "golden")
        return x

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._oracle.close()
        self._tmp.cleanup()
