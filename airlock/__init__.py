"""Airlock's core: policy, trust roots, hashing, signing, approvals, the ledger and the sandbox.

Serving code obtains a model only through :func:`load` (verified loading: ``registry/loading.py``)."""

from __future__ import annotations

from pathlib import Path


def load(stage: str = "production", *, config: str | Path = "airlock.toml", registry: str | Path | None = None):
    """The ``stage`` model, as verified bytes and tensors, or :class:`~airlock.errors.AirlockError` with the reason:
    signature, digest, approvals (production), ledger anchor, gate evidence and AIBOM all verified first.

        model = airlock.load("production", config="/etc/airlock/airlock.toml")
        net.load_state_dict(model.tensors())
    """
    from registry.loading import load as _load

    return _load(stage, config=config, registry=registry)
