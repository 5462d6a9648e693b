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

PREPARED = "served.json"


def prepare(pol, dest: Path, registry: str | Path | None = None, golden: bool = True) -> Path:
    """Everything the server needs, verified, in the new directory ``dest`` (the init container's step on
    Kubernetes: templates/k8s/serving.yaml): the verified model files, its training commit's code, the golden set
    it was promoted against (digest checked against the signed provenance), and ``served.json``. The server then
    runs from it (``airlock serve --from``) with no registry, no registry key and no repository."""
    import json
    import shutil

    from airlock import gitutil
    from registry.loading import load

    if dest.exists() and any(dest.iterdir()):
        raise ServeError(f"{dest} is not empty", "prepare into a new (or empty) directory")
    v = load("production", config=pol.source, registry=registry)
    dest.mkdir(parents=True, exist_ok=True)
    v.export(dest / "model")
    commit = (v.provenance.get("commit") or {}).get("commit")
    if not isinstance(commit, str):
        raise ServeError("the production model's provenance names no training commit", "re-run the pipeline")
    try:
        gitutil.export_commit(pol.repo.path, commit, dest / "src")
    except AirlockError as e:
        raise ServeError(f"cannot export the model's code (commit {commit[:12]}): {e.what}", e.hint) from None
    if golden:  # the guard's reference (airlock watch evaluates on the golden set as it is now instead)
        _check_golden(v.provenance, pol.data.golden.dir)
        shutil.copytree(pol.data.golden.dir, dest / "golden")
    (dest / PREPARED).write_text(
        json.dumps({"digest": v.digest, "approvers": list(v.approvers), "stage": v.stage}, indent=2) + "\n"
    )
    return dest


def _check_golden(provenance: dict, golden_dir: Path) -> None:
    from airlock.hashing import hash_tree

    want = ((provenance.get("datasets") or {}).get("golden") or {}).get("root_digest")
    have = hash_tree(golden_dir).root_digest
    if want != have:
        raise ServeError(
            f"the golden set in {golden_dir} is not the one the model was promoted against "
            f"({have[:19]}… ≠ {str(want)[:19]}…)",
            "restore the golden set (the guard calibrates its detectors on it)",
        )


def _from_prepared(prepared: Path):
    """The model a trusted init container prepared (``prepare``): its files read once, their digest the one it
    recorded."""
    from airlock import untrusted
    from registry.loading import VerifiedModel, _json, read_verified

    try:
        meta = untrusted.loads((prepared / PREPARED).read_bytes(), f"{prepared / PREPARED}")
        digest, approvers = str(meta["digest"]), tuple(str(a) for a in meta["approvers"])
    except (OSError, KeyError, TypeError, AirlockError) as e:
        raise ServeError(f"{prepared} is not a prepared model ({e})", "run airlock serve --prepare DIR first") from None
    files = read_verified(prepared / "model", digest)
    return VerifiedModel(
        "production", digest, files, _json(files, "training.json"), _json(files, "provenance.json"), approvers
    )


class ServedModel:
    def __init__(
        self, pol, registry: str | Path | None = None, prepared: Path | None = None, golden: bool = True
    ) -> None:
        """Production, verified now (``prepared`` None), or as an init container prepared and verified it."""
        from airlock.oracle import Oracle
        from airlock.sandbox import Sandbox

        self._tmp = tempfile.TemporaryDirectory(prefix="airlock-serve-")
        if prepared is None:
            work = prepare(pol, Path(self._tmp.name) / "prepared", registry, golden)
        else:
            work = Path(prepared)
        self.verified = _from_prepared(work)
        self.digest = self.verified.digest
        self.metadata = self.verified.metadata
        self.golden_dir = work / "golden"
        model_dir, src = work / "model", work / "src"
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
        """The golden set's inputs (the one the model was promoted against: its digest is checked again)."""
        from airlock.datasets import load_split

        _check_golden(self.verified.provenance, self.golden_dir)
        x, _ = load_split(self.golden_dir, "golden")
        return x

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._oracle.close()
        self._tmp.cleanup()
