"""The inference app: ``POST /v1/predict`` behind the guard, ``GET /v1/model``, ``GET /healthz``, ``GET /metrics``.

``airlock serve --config airlock.toml`` builds it from the policy's ``[serve]`` section (docs/serving.md): the
production model through verified loading (serve/model.py), the input contract from its signed metadata, the
guard's reference from the golden set the model was promoted against, its budget from the signed extraction
effort. Answers are labels, or scores rounded to two decimals for clients entitled to them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
from fastapi import Request  # at module level: the route's annotation is resolved from here
from fastapi.responses import JSONResponse

from airlock.errors import ServeError
from serve.alerts import Alerts
from serve.contract import InputContract, Rejected
from serve.detectors import Reference
from serve.guard import Guard, GuardConfig, Metrics
from serve.keys import Keys
from serve.store import from_url

EXTRACTION_GATE = "extraction_effort"


def signed_extraction_effort(provenance: dict) -> int | None:
    """Queries a copycat needed for 90% agreement, from the model's signed advisory evidence."""
    for g in provenance.get("gates") or []:
        if isinstance(g, dict) and g.get("gate") == EXTRACTION_GATE:
            v = (g.get("metrics") or {}).get("extraction_queries_to_target")
            if isinstance(v, (int, float)) and v > 0:
                return int(v)
    return None


def build(pol, model, store=None, alerts: Alerts | None = None) -> Any:
    """The guarded app for a :class:`serve.model.ServedModel` (or anything with ``probabilities``, ``digest``,
    ``metadata``, ``verified``) under the policy's ``[serve]`` section."""
    from fastapi import FastAPI

    cfg = pol.serve
    if cfg is None:
        raise ServeError("no [serve] section in the policy", "add [serve] api_keys = ... (docs/serving.md)")
    contract = InputContract.from_metadata(model.metadata, cfg.max_batch, cfg.max_body_bytes)
    x_ref = model.reference(pol)
    ref = Reference.build(x_ref, model.probabilities(x_ref), cfg.similar_window, cfg.low_margin)
    effort = signed_extraction_effort(model.verified.provenance)
    budget = cfg.budget or (int(cfg.budget_fraction * effort) if effort else None)
    if budget is None:
        raise ServeError(
            "no query budget: the model's signed evidence has no extraction effort and serve.budget is unset",
            "enable the advisories (advisory.enabled) and re-run, or set serve.budget",
        )
    the_store = store or from_url(cfg.store)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await the_store.close()
        if hasattr(model, "close"):
            model.close()

    app = FastAPI(title="Airlock inference", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": model.digest, "worker": os.getpid()}

    @app.get("/v1/model")
    def describe() -> dict:
        return {
            "digest": model.digest,
            "approvers": list(model.verified.approvers),
            "input": contract.describe(),
            "budget": budget,
        }

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        state = request.scope.setdefault("state", {})
        x = state.get("airlock_inputs")
        if x is None:  # without the guard in front (never in `airlock serve`): parse here
            try:
                x = contract.parse(await request.body())
            except Rejected as r:
                return JSONResponse({"error": r.code, "detail": r.reason}, status_code=r.status)
        probs = await run_in_threadpool(model.probabilities, x)
        state["airlock_probs"] = probs
        out: dict[str, Any] = {"labels": [int(i) for i in np.argmax(probs, axis=1)], "model": model.digest}
        if not state.get("airlock_label_only", True):
            out["scores"] = np.round(probs, 2).tolist()
        return JSONResponse(out)

    guard = Guard(
        app,
        keys=Keys.load(cfg.api_keys),
        store=the_store,
        contract=contract,
        reference=ref,
        config=GuardConfig(
            rate_per_second=cfg.rate_per_second,
            burst=cfg.burst,
            budget=budget,
            block_prefix_v4=cfg.block_prefix_v4,
            block_prefix_v6=cfg.block_prefix_v6,
            rate_window=cfg.rate_window,
            thresholds=cfg,
        ),
        alerts=alerts or Alerts(cfg.alerts),
        metrics=Metrics(),
        model_digest=model.digest,
    )
    guard.budget, guard.effort = budget, effort
    return guard


CONFIG_ENV = "AIRLOCK_SERVE_CONFIG"
PREPARED_ENV = "AIRLOCK_SERVE_PREPARED"


def factory():
    """For uvicorn's workers (``airlock serve --workers N``): each builds its own verified model and guard."""
    from pathlib import Path

    from airlock import policy
    from serve.model import ServedModel

    pol = policy.load(os.environ[CONFIG_ENV])
    prepared = os.environ.get(PREPARED_ENV)
    return build(pol, ServedModel(pol, prepared=Path(prepared) if prepared else None))
