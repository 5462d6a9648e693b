"""The runtime guard on the demo's production model: detection per traffic type, and what the guard costs.

    python3 -m bench.runtime_guard [--clients 15] [--queries 400] [--out bench/results/runtime_guard.json]

Runs ``airlock demo`` in a fresh directory, then serves its production model (verified, answering from its sandbox)
behind the guard, in process (httpx's ASGI transport: the real app, no network). For each traffic type, ``--clients``
clients of that type send up to ``--queries`` single-sample queries each, beside 20 benign background clients, until
they are refused. Per type: the share of clients alarmed, the queries before the first alarm, and the agreement
with the victim (on the 360 held-out test digits) of a surrogate (scikit-learn MLP) trained on the labels the client
received before its alarm - and, as the baseline measured in the same run, on all its queries if nothing stopped
it. Then the guard's own time per request (the model's excluded) over 2,000 benign requests, with the in-memory
store and with Redis (Debian's redis-server on 127.0.0.1), against the model's time; target p99 <= 0.5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = ("benign", "benign_raw", "copycat", "knockoff", "noise", "jbda", "jbda_rt", "boundary")


def _queries(kind: str, pool: np.ndarray, answer, n: int, rng) -> np.ndarray:
    from tests import guard_traffic as gt

    if kind == "benign":
        return gt.benign(pool, n, rng)
    if kind in ("benign_raw", "copycat"):  # natural digits, as they are: a copycat looks exactly like this
        return gt.benign(pool, n, rng, jitter=0.0)
    if kind == "knockoff":
        return gt.knockoff(n, rng)
    if kind == "noise":
        return gt.noise(n, rng)
    if kind == "jbda":
        return gt.jbda(pool, answer, n, rng)
    if kind == "jbda_rt":
        return gt.jbda(pool, answer, n, rng, random_targets=True)
    if kind == "boundary":
        return gt.boundary(pool, n, rng)
    raise ValueError(kind)


def _agreement(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, victim: np.ndarray) -> float | None:
    from sklearn.neural_network import MLPClassifier

    if len(x) < 10 or len(set(y.tolist())) < 2:
        return None
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0).fit(x.reshape(len(x), -1), y)
    return float((clf.predict(x_test.reshape(len(x_test), -1)) == victim).mean())


async def _run_type(kind, pol, model, api, pool, x_test, victim, clients, queries, seed, tmp, budget=True):
    from serve import app as serve_app
    from serve.alerts import Alerts
    from serve.store import MemoryStore
    from tests.guard_traffic import Traffic, benign

    alerts = Alerts(tmp / f"alerts-{kind}.jsonl")
    guard = serve_app.build(pol, model, store=MemoryStore(), alerts=alerts)
    signed_budget = guard.budget
    # Simulated clients send as fast as the app answers: the token bucket is lifted (it measures nothing here).
    guard.cfg.rate_per_second, guard.cfg.burst = 1e9, 10**9
    if not budget:  # the detectors alone: the budget would otherwise stop every client first
        guard.cfg.budget = 10**9
    t = Traffic(guard, api)
    rng = np.random.default_rng(seed)

    def answer(xs):
        return model.probabilities(xs).argmax(1)

    answered: dict[str, list[tuple[np.ndarray, int]]] = {}
    stopped: dict[str, int | None] = {}
    made: dict[str, np.ndarray] = {}

    async def attacker(name: str, qs: np.ndarray):
        answered[name], stopped[name] = [], None
        for i, q in enumerate(qs):
            r = await t.send(name, q[None])
            if r.status_code != 200:
                stopped[name] = i
                return
            answered[name].append((q, r.json()["labels"][0]))

    async def background(i: int):
        for q in benign(pool, queries // 4, rng):
            await t.send(f"bg-{i}", q[None])

    names = [f"{kind}-{i}" for i in range(clients)]
    for n in names:
        made[n] = _queries(kind, pool, answer, queries, np.random.default_rng(hash(n) % 2**32))
    await asyncio.gather(*[attacker(n, made[n]) for n in names], *[background(i) for i in range(20)])
    first: dict[str, int] = {}
    for e in alerts.sent:
        f = e["output_fields"]
        if "airlock.queries_seen" in f:
            first.setdefault(f["airlock.client"], int(f["airlock.queries_seen"]))
    bg_alarmed = sorted(c for c in first if c.startswith("bg-"))
    rows = []
    for n in names:
        got = answered[n]
        upto = first.get(n, len(got))
        x_seen = np.asarray([q for q, _ in got[:upto]]) if got else np.zeros((0, 1, 8, 8))
        y_seen = np.asarray([lab for _, lab in got[:upto]])
        rows.append(
            {
                "client": n,
                "alarmed": n in first,
                "queries_before_alarm": first.get(n),
                "refused_at": stopped[n],
                "agreement_at_alarm": _agreement(x_seen, y_seen, x_test, victim) if n in first else None,
                "agreement_when_refused": _agreement(x_seen, y_seen, x_test, victim) if stopped[n] else None,
                "agreement_unstopped": _agreement(made[n], answer(made[n]), x_test, victim),
            }
        )
    detectors = sorted({e["output_fields"].get("airlock.detector") for e in alerts.sent} - {None})
    rules = sorted({e["rule"] for e in alerts.sent})

    def med(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(vals), 3) if vals else None

    return {
        "type": kind,
        "alarmed": f"{sum(r['alarmed'] for r in rows)}/{len(rows)}",
        "median_queries_before_alarm": med("queries_before_alarm"),
        "median_refused_at": med("refused_at"),
        "median_agreement_at_alarm": med("agreement_at_alarm"),
        "median_agreement_when_refused": med("agreement_when_refused"),
        "median_agreement_unstopped": med("agreement_unstopped"),
        "detectors": detectors,
        "rules": rules,
        "background_alarmed": bg_alarmed,
        "budget": signed_budget if budget else None,
        "clients": rows,
    }


async def _latency(pol, model, api, pool, store, n: int) -> dict:
    from serve import app as serve_app
    from serve.alerts import Alerts
    from tests.guard_traffic import Traffic, benign

    guard = serve_app.build(pol, model, store=store, alerts=Alerts(Path(tempfile.mkdtemp()) / "a.jsonl"))
    guard.cfg.budget = 10**9  # the benchmark measures time, not budgets or rates
    guard.cfg.rate_per_second, guard.cfg.burst = 1e9, 10**9
    guard.timings = []
    t = Traffic(guard, api)
    rng = np.random.default_rng(0)
    model_times = []
    for i, q in enumerate(benign(pool, n, rng)):
        t0 = time.perf_counter()
        r = await t.send(f"lat-{i % 20}", q[None])
        model_times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    pre = np.asarray([a for a, _ in guard.timings[100:]]) * 1000  # warm-up excluded
    post = np.asarray([b for _, b in guard.timings[100:]]) * 1000
    total = np.asarray(model_times[100:]) * 1000
    rtt = None
    if hasattr(store, "_r"):  # one bare Redis round trip from this event loop: the floor of the store's share
        samples = []
        for _ in range(500):
            t0 = time.perf_counter()
            await store._r.ping()
            samples.append(time.perf_counter() - t0)
        rtt = {
            "p50": round(float(np.quantile(samples, 0.5)) * 1000, 3),
            "p99": round(float(np.quantile(samples, 0.99)) * 1000, 3),
        }
    q = lambda a, p: round(float(np.quantile(a, p)), 3)  # noqa: E731
    return {
        "before_answer_ms_p50": q(pre, 0.5),
        "before_answer_ms_p99": q(pre, 0.99),
        "after_answer_ms_p50": q(post, 0.5),
        "after_answer_ms_p99": q(post, 0.99),
        "request_ms_p50": q(total, 0.5),
        "request_ms_p99": q(total, 0.99),
        "redis_round_trip_ms": rtt,
    }


def _redis() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    from airlock import policy
    from airlock.datasets import load_split
    from serve.keys import add_client
    from serve.model import ServedModel
    from serve.store import MemoryStore, RedisStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=15)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--latency-requests", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "runtime_guard.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="airlock-bench-guard-"))
    work = tmp / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(work), "--json"],
        capture_output=True, text=True, cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
    )  # fmt: skip
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return 1
    pol = policy.load(work / "airlock.toml")
    assert pol.serve is not None
    names = [f"{k}-{i}" for k in TYPES for i in range(args.clients)] + [f"bg-{i}" for i in range(20)]
    names += [f"lat-{i}" for i in range(20)]
    api = {n: add_client(pol.serve.api_keys, n) for n in names}
    model = ServedModel(pol)
    pool, _ = load_split(pol.data.train.dir, "train")
    x_test, _ = load_split(pol.data.train.dir, "test")
    victim = model.probabilities(x_test).argmax(1)
    results = []
    try:
        for i, kind in enumerate(TYPES):
            r = asyncio.run(
                _run_type(kind, pol, model, api, pool, x_test, victim, args.clients, args.queries, i, tmp, False)
            )
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "clients"}), flush=True)
        # As served: the budget (the signed extraction effort) in force; the copycat is what it is for.
        r = asyncio.run(
            _run_type("copycat", pol, model, api, pool, x_test, victim, args.clients, args.queries, 99, tmp)
        )
        r["type"] = "copycat (budget in force)"
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "clients"}), flush=True)
        latency = {"memory": asyncio.run(_latency(pol, model, api, pool, MemoryStore(), args.latency_requests))}
        proc, url = _redis()
        try:
            latency["redis"] = asyncio.run(_latency(pol, model, api, pool, RedisStore(url), args.latency_requests))
        finally:
            proc.terminate()
    finally:
        model.close()
    out = {
        "command": f"python3 -m bench.runtime_guard --clients {args.clients} --queries {args.queries}",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": model.digest,
        "budget": results[-1]["budget"],
        "types": results,
        "latency": latency,
        "target": {"before_answer_ms_p99": 0.5},
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"latency": latency}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
