"""The guard: a pure ASGI middleware in front of the inference route, telling extraction and probing from drift.

Per request to ``/v1/predict``, in this order (each step names the attack it blocks):

1. **Who asks.** An API key (``Authorization: Bearer`` or ``X-API-Key``) names the client (serve/keys.py); none or an
   unknown one is 401. The source address gives the client's block (/24 for IPv4, /64 for IPv6): an attacker who
   rotates keys from one network is still one block.
2. **What is asked.** The body is read up to ``max_body_bytes`` and parsed against the signed input contract
   (serve/contract.py): a malformed, oversized, non-finite or out-of-range request is 4xx and never reaches the model.
3. **How much.** One atomic call to the shared store (serve/store.py): a blocked client or block is 403; beyond the
   token bucket 429 with ``Retry-After`` (tighter on the ladder's second rung); beyond the lifetime budget 429. The
   budget defaults to the model's signed extraction effort (queries a copycat needs for 90% agreement): the one
   limit a copycat with natural images, statistically benign, runs into. Volume milestones (50/75/100% of it) alert.
   For a label-only client the model answers while the store decides; nothing is sent before it admits, a refused
   answer is dropped, and a store that cannot answer is a 503 (fail closed).
4. **What it sees.** Labels only, unless the client is entitled to (rounded) scores and not on the ladder.
5. **What it was.** After the answer, each query goes through the client's detectors (serve/detectors.py) and the
   drift window (serve/drift.py). An alarm climbs the response ladder: 1 label-only, 2 a quarter of the rate, 3
   blocked, each step an alert. A window whose flags one client or block holds is a security alert naming it (and
   its block climbs too); a window that drifts for everyone is a drift event, and nobody is blocked for it.

Alerts are Falco-format JSON lines (serve/alerts.py); metrics are Prometheus counters and histograms at
``/metrics`` with no client id in any label value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from serve.alerts import Alerts
from serve.contract import InputContract, Rejected
from serve.detectors import ClientDetectors, Reference
from serve.drift import Window
from serve.keys import Keys
from serve.store import BLOCKED, RATE_LIMITED

PREDICT = "/v1/predict"
LADDER = {1: "label-only", 2: "tighter rate", 3: "blocked"}
TIGHT = 0.25
MILESTONES = (0.5, 0.75, 1.0)
POPULATION = 2000


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "airlock_requests", "inference requests by outcome", ["outcome"], registry=self.registry
        )
        self.flags = Counter(
            "airlock_guard_flags", "queries flagged, by detector", ["detector"], registry=self.registry
        )
        self.alarms = Counter(
            "airlock_guard_alarms", "client alarms, by detector", ["detector"], registry=self.registry
        )
        self.actions = Counter(
            "airlock_guard_actions", "response ladder steps and alerts", ["action"], registry=self.registry
        )
        self.windows = Counter("airlock_guard_windows", "drift windows by outcome", ["outcome"], registry=self.registry)
        self.overhead = Histogram(
            "airlock_guard_seconds",
            "time the guard adds to a request (the model's time excluded)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=self.registry,
        )
        self.model = Histogram("airlock_model_seconds", "time the model takes to answer", registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass
class GuardConfig:
    rate_per_second: float
    burst: int
    budget: int
    block_prefix_v4: int = 24
    block_prefix_v6: int = 64
    window: int = 300
    rate_window: int = 100
    thresholds: object = None  # the ServePolicy (detector thresholds)


def source_block(host: str | None, v4: int, v6: int) -> str:
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return "unknown"
    prefix = v4 if ip.version == 4 else v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class Guard:
    def __init__(
        self,
        app,
        *,
        keys: Keys,
        store,
        contract: InputContract,
        reference: Reference,
        config: GuardConfig,
        alerts: Alerts,
        metrics: Metrics | None = None,
        model_digest: str = "",
    ) -> None:
        self.app, self.keys, self.store, self.contract, self.ref = app, keys, store, contract, reference
        self.cfg, self.alerts, self.metrics = config, alerts, metrics or Metrics()
        self.model_digest = model_digest
        self.budget = config.budget
        # Each request's guard time before the answer (what the client waits for) and after it (the detectors and
        # the window: the response is already sent), when a benchmark asks for it.
        self.timings: list[tuple[float, float]] | None = None
        self.effort: int | None = None  # the signed extraction effort the budget came from (serve/app.py)
        self.clients: dict[str, ClientDetectors] = {}
        self.window = Window(reference, config.window)
        self.alarmed_at: dict[tuple[str, str], int] = {}  # (client, detector) -> queries seen at its last alarm
        self.seen: dict[str, int] = {}
        self.refused: dict[str, tuple[float, Rejected]] = {}  # client -> (until, the refusal) seen by this worker
        # Every client's flags, by detector, over the last queries: a rate detector's alarm is drift, not an attack,
        # when everyone else is flagged about as often.
        self.population: dict[str, deque[tuple[str, bool]]] = {}

    # -- ASGI ------------------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/metrics" and scope["method"] == "GET":
            await _respond(send, 200, self.metrics.render(), "text/plain; version=0.0.4")
            return
        if scope["path"] != PREDICT:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self._predict(scope, receive, send, started)
        except Rejected as r:
            self.metrics.requests.labels(r.code).inc()
            await _respond(
                send, r.status, json.dumps({"error": r.code, "detail": r.reason}).encode(), headers=r.headers
            )

    async def _predict(self, scope, receive, send, started: float) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        # 1. Who asks: no key, no answer.
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        client = self.keys.client(key)
        if client is None:
            raise _reject(401, "auth.unknown_key", "no valid API key (Authorization: Bearer <key>)")
        block = source_block((scope.get("client") or (None,))[0], self.cfg.block_prefix_v4, self.cfg.block_prefix_v6)
        # 2. What is asked: bounded, then parsed against the signed contract, before anything is spent.
        if scope["method"] != "POST":
            raise _reject(405, "method", "POST a JSON body to /v1/predict")
        body = await _read_body(receive, headers, self.contract.max_body_bytes)
        x = self.contract.parse(body)
        # 3. How much: the shared store decides atomically, for every worker. A refusal this worker has already
        #    seen (blocked, budget spent, rate for a moment) is repeated without asking. For a label-only client the
        #    model answers while the store decides; nothing is sent until it admits, and a refused answer is dropped.
        known = self.refused.get(client.name)
        if known is not None and known[0] > time.monotonic():
            raise known[1]
        pending = asyncio.ensure_future(
            self.store.admit(client.name, block, self.cfg.rate_per_second, self.cfg.burst, len(x), TIGHT)
        )
        overlap = not client.scores
        level = 0 if overlap else (await self._admitted(pending, client.name, block, len(x))).level
        # 4. What it sees: labels only unless entitled and in good standing.
        state = dict(scope.get("state") or {})
        state.update(airlock_inputs=x, airlock_label_only=overlap or level >= 1)
        inner = dict(scope, state=state)
        guard_time = time.perf_counter() - started
        t_model = time.perf_counter()
        status: list[int] = []
        held: list[dict] = []

        async def hold(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            held.append(message)

        try:
            await self.app(inner, _replay(body), hold)
        except BaseException:
            pending.cancel()
            raise
        self.metrics.model.observe(time.perf_counter() - t_model)
        if overlap:
            waited = time.perf_counter()
            await self._admitted(pending, client.name, block, len(x))
            guard_time += time.perf_counter() - waited  # the store's decision, if it came after the model's answer
        for message in held:
            await send(message)
        after = time.perf_counter()
        probs = state.get("airlock_probs")
        self.metrics.requests.labels("answered" if status and status[0] < 400 else "error").inc()
        # 5. What it was: detectors and the window, after the answer (the client does not wait on them).
        if probs is not None:
            await self._observe(client.name, block, x, np.asarray(probs))
        post = time.perf_counter() - after
        self.metrics.overhead.observe(guard_time + post)
        if self.timings is not None:
            self.timings.append((guard_time, post))

    async def _admitted(self, pending, client: str, block: str, cost: int):
        """The store's decision: a refusal raised (and remembered), an admission returned. A store that cannot
        answer is a refusal (fail closed)."""
        try:
            adm = await pending
        except Exception as e:  # noqa: BLE001 - Redis down, a timeout: refuse, say so in one line
            raise _reject(503, "guard.store", f"the guard's store cannot be reached ({type(e).__name__})") from None
        if adm.status == BLOCKED:
            r = _reject(403, "guard.blocked", "this client is blocked (the response ladder's last rung)")
            self.refused[client] = (float("inf"), r)
            raise r
        if adm.status == RATE_LIMITED:
            r = _reject(429, "guard.rate", "too many requests", {"retry-after": "1"})
            self.refused[client] = (time.monotonic() + min(1.0, 1.0 / self.cfg.rate_per_second), r)
            raise r
        await self._milestones(client, block, adm.count, cost)
        if adm.count > self.cfg.budget:
            r = _reject(429, "guard.budget", f"this client's query budget ({self.cfg.budget}) is spent")
            self.refused[client] = (float("inf"), r)
            raise r
        return adm

    # -- after the answer ------------------------------------------------------------------------------------

    async def _observe(self, client: str, block: str, x: np.ndarray, probs: np.ndarray) -> None:
        det = self.clients.get(client)
        if det is None:
            if len(self.clients) > 100_000:  # bounded memory: the oldest half is forgotten (their counters stay)
                for k in list(self.clients)[: len(self.clients) // 2]:
                    del self.clients[k]
            det = self.clients[client] = ClientDetectors(self.ref, self.cfg.thresholds)
        for xi, pi in zip(x.reshape(len(x), -1), probs):
            self.seen[client] = self.seen.get(client, 0) + 1
            flags, alarms = det.observe(xi, pi)
            for d in det.all:
                self.population.setdefault(d.name, deque(maxlen=POPULATION)).append((client, d.name in flags))
            for f in flags:
                self.metrics.flags.labels(f).inc()
            for detector, reason in alarms:
                last = self.alarmed_at.get((client, detector))
                if last is not None and self.seen[client] - last < self.cfg.rate_window:
                    continue  # one alarm per detector per window of this client's queries
                self.alarmed_at[(client, detector)] = self.seen[client]
                if self._everyone(client, detector, det):
                    self.metrics.actions.labels("drift, not alarmed").inc()
                    continue
                self.metrics.alarms.labels(detector).inc()
                await self._climb(client, block, detector, reason)
            result = self.window.add(client, block, xi, pi, bool(flags))
            if result is not None:
                await self._window(result)

    def _everyone(self, client: str, detector: str, det: ClientDetectors) -> bool:
        """Drift, not an attack: most other recent clients are flagged by this detector at least half as often as
        this one (a population shift). Fifteen clients sending noise among twenty are not "most clients"."""
        mine = next(d for d in det.all if d.name == detector)
        rate = getattr(mine, "flags", None)
        if not rate:
            return False  # a shape detector (PRADA, too-similar): drift does not make natural queries look synthetic
        own = sum(rate) / len(rate)
        seen: dict[str, list[int]] = {}
        for who, f in self.population.get(detector, ()):
            if who != client:
                c = seen.setdefault(who, [0, 0])
                c[0] += int(f)
                c[1] += 1
        others = [flags / n for flags, n in seen.values() if n >= 5]
        if len(others) < 5:
            return False
        return sum(r >= 0.5 * own for r in others) / len(others) > 0.5

    async def _climb(self, client: str, block: str, detector: str, reason: str) -> None:
        current = await self.store.raise_level(f"level:c:{client}", 0)
        rung = await self.store.raise_level(f"level:c:{client}", min(3, current + 1))
        self.metrics.actions.labels(LADDER[rung]).inc()
        self.alerts.emit(
            "Airlock model extraction or probing suspected",
            "Critical" if rung >= 3 else "Warning",
            f"Client {client} ({block}) alarmed by {detector}: {reason}; response: {LADDER[rung]} "
            f"(model={self.model_digest[:19]})",
            {
                "airlock.client": client,
                "airlock.block": block,
                "airlock.detector": detector,
                "airlock.reason": reason,
                "airlock.response": LADDER[rung],
                "airlock.rung": rung,
                "airlock.queries_seen": self.seen.get(client, 0),
                "airlock.model": self.model_digest,
            },
            ["ml", "extraction", "mitre_collection"],
        )

    async def _retrain(self) -> str | None:
        """On a drift event: start the retraining deployment, at most once an hour (across workers). A failure to
        start it is said in the alert; serving goes on."""
        name = getattr(self.cfg.thresholds, "retrain_deployment", None)
        if not name or not await self.store.once(f"retrain:{int(time.time() // 3600)}"):
            return None
        try:
            run_id = await _run_deployment(name)
        except Exception as e:  # noqa: BLE001 - any Prefect failure: reported, never fatal to serving
            self.metrics.actions.labels("retrain not started").inc()
            return f"retraining {name} could not be started ({type(e).__name__})"
        self.metrics.actions.labels("retrain started").inc()
        return f"started retraining: {name} run {run_id}"

    async def _milestones(self, client: str, block: str, count: int, cost: int) -> None:
        before = count - cost
        for m in MILESTONES:
            mark = int(m * self.cfg.budget)
            if before < mark <= count and await self.store.once(f"milestone:{client}:{m}"):
                self.metrics.actions.labels(f"volume {int(m * 100)}%").inc()
                self.alerts.emit(
                    "Airlock query volume milestone",
                    "Warning" if m >= 1.0 else "Notice",
                    f"Client {client} ({block}) reached {int(m * 100)}% of its query budget ({count} of "
                    f"{self.cfg.budget}: about what a copycat needs for 90% agreement)",
                    {
                        "airlock.client": client,
                        "airlock.block": block,
                        "airlock.queries": count,
                        "airlock.budget": self.cfg.budget,
                        "airlock.model": self.model_digest,
                    },  # fmt: skip
                    ["ml", "extraction"],
                )

    async def _window(self, r) -> None:
        tests = {k: round(v, 6) for k, v in r.tests.items()}
        if r.suspect:
            kind, who = r.suspect.split(":", 1)
            self.metrics.windows.labels("attack").inc()
            rung = await self.store.raise_level(f"level:{'c' if kind == 'client' else 'b'}:{who}", 1)
            self.alerts.emit(
                "Airlock probing in production traffic",
                "Warning",
                f"One {kind} ({who}) holds {r.suspect_share:.0%} of the window's flags (p = {r.suspect_p:.1e}); "
                f"response: {LADDER[max(rung, 1)]}; not drift",
                {
                    "airlock.suspect": who,
                    "airlock.kind": kind,
                    "airlock.share": round(r.suspect_share, 3),
                    "airlock.p": r.suspect_p,
                    "airlock.tests": tests,
                    "airlock.model": self.model_digest,
                },  # fmt: skip
                ["ml", "probing"],
            )
        elif r.drift:
            self.metrics.windows.labels("drift").inc()
            retrain = await self._retrain()
            self.alerts.emit(
                "Airlock production drift",
                "Notice",
                f"Production inputs drifted for {r.clients} clients (tests {tests}); no client holds the flags: "
                f"{retrain or 'retrain (airlock run)'}; nobody is blocked",
                {
                    "airlock.tests": tests,
                    "airlock.clients": r.clients,
                    "airlock.flags": r.flags,
                    "airlock.model": self.model_digest,
                    "airlock.retrain": retrain,
                },
                ["ml", "drift"],
            )
        else:
            self.metrics.windows.labels("quiet").inc()


async def _run_deployment(name: str) -> str:
    from prefect.deployments.flow_runs import arun_deployment

    run = await arun_deployment(name, timeout=0, tags=["airlock", "drift"])
    return str(run.id)


def _reject(status: int, code: str, reason: str, headers: dict | None = None) -> Rejected:
    return Rejected(status, code, reason, headers)


async def _read_body(receive, headers: dict, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _reject(413, "input.too_large", f"the request body is over {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _reject(400, "input.incomplete", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _reject(413, "input.too_large", f"the request body is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _respond(send, status: int, body: bytes, content_type: str = "application/json", headers=None) -> None:
    hdrs = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
