"""Suspend mode, for real: a Prefect server on 127.0.0.1 (flows/_server.py with full=True: the UI and every background
service, as `prefect server start` serves it), a process work pool, a deployment of the retrain flow and a real
`prefect worker`. The run's process exits at each approval pause; approvals from other processes start it again on
the worker; training, the model gates and signing run once; the staged model is verified again from the registry at
every start, and a model swapped while the run was suspended ends it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from airlock.ledger import Ledger
from tests._flow import approve, set_policy
from tests.conftest import ROOT
from tests.test_signing_modes import make_token

pytestmark = pytest.mark.slow

POOL = "airlock-test-pool"


@pytest.fixture(scope="module")
def server(full_server):
    return full_server


@pytest.fixture(scope="module")
def hsm(tmp_path_factory):
    """A PKCS#11 token (SoftHSM2) the worker's flow runs can sign with, as a work-pool machine with an HSM would."""
    return make_token(tmp_path_factory.mktemp("hsm"))


@pytest.fixture(scope="module")
def worker(server, hsm, tmp_path_factory):
    """A process work pool, a deployment of `flows.retrain:retrain` on it, and a worker polling every second."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async def setup() -> str:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)
            flow_id = await client.create_flow_from_name("airlock-retrain")
            dep = await client.create_deployment(
                flow_id=flow_id,
                name="retrain-suspend-test",
                entrypoint="flows.retrain:retrain",
                work_pool_name=POOL,
                job_variables={"working_dir": str(ROOT)},
            )
            return str(dep)

    deployment = _with_api(server, setup)
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
            cwd=ROOT,
            env={
                **os.environ,
                "PREFECT_API_URL": server,
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                **hsm["env"],  # the token and its PIN, in the worker's environment only (never in the policy)
                "PREFECT_LOGGING_LEVEL": "INFO",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield {"api": server, "deployment": deployment, "proc": proc, "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _with_api(api: str, coro_fn):
    """Run a coroutine against this server (settings, not os.environ: Prefect reads its settings once)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(coro_fn())


def _client_call(api: str, fn):
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await fn(client)

    return _with_api(api, go)


def start_deployment_run(w, config: Path, tags: tuple[str, ...] = ()) -> str:
    async def go(client):
        fr = await client.create_flow_run_from_deployment(
            uuid.UUID(w["deployment"]), parameters={"config": str(config)}, tags=list(tags)
        )
        return str(fr.id)

    return _client_call(w["api"], go)


def state_of(w, run_id: str):
    return _client_call(w["api"], lambda c: c.read_flow_run(uuid.UUID(run_id))).state


def wait_for_state(w, run_id: str, want, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = state_of(w, run_id)
        if state is not None and want(state):
            return state
        if state is not None and state.is_final() and not want(state):
            raise AssertionError(f"run ended {state.name}: {state.message}\n{w['log'].read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} never reached the state (now {state_of(w, run_id)})")


def suspended(state) -> bool:
    return state.is_paused() and state.name == "Suspended"


def no_flow_process(w, timeout: float = 60) -> bool:
    """Nothing runs under the worker: the suspended run's process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(w["proc"].pid)], capture_output=True, text=True).stdout.split()
        if not children:
            return True
        time.sleep(0.5)
    return False


def task_runs(w, run_id: str) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go(client):
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)])))
        return [r.name.rsplit("-", 1)[0] for r in runs]

    return _client_call(w["api"], go)


def test_suspend_resume_from_other_processes_without_rerunning_training(work, worker, hsm):
    """Suspended twice (no process waits), approved by alice then bob from separate `airlock approve` processes;
    each approval starts the run again on the worker, which verifies the staged model from the registry and goes
    on at the approval step: one training, one model-gate run, one signing; promoted.

    The model is signed by a key inside a PKCS#11 token (signing.mode = "pkcs11"): the flow path of that signing
    mode end to end, verified under the public key exported from the token."""
    set_policy(work, "approval", "mode", '"suspend"')
    text = work["policy"].read_text()
    old = 'private_key = "keys/model_signing.key"'
    assert old in text
    work["policy"].write_text(text.replace(old, f'mode = "pkcs11"\npkcs11_uri = "{hsm["uri"]}"'))
    (work["trust"] / "model_signing.pub").write_bytes(hsm["pub"].read_bytes())
    run_id = start_deployment_run(worker, work["policy"])
    wait_for_state(worker, run_id, suspended)
    assert no_flow_process(worker), "a process still runs under the worker while the run is suspended"

    for who in ("alice", "bob"):
        res = approve(work, worker["api"], run_id, work["keys"] / who)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "accepted:" in res.stdout, res.stdout
    state = wait_for_state(worker, run_id, lambda s: s.is_final())
    assert state.is_completed(), (state.name, state.message)

    ledger = [e for e in Ledger(work["ledger"]).entries() if e.get("run_id") == run_id]
    kinds = [e["kind"] for e in ledger]
    assert kinds.count("run.start") == 1 and kinds.count("run.resumed") == 2, kinds
    assert kinds.count("run.suspended") == 2, kinds
    assert kinds.count("registry.stage") == 1 and kinds.count("model.signed") == 1, kinds
    assert kinds.count("approval.requested") == 1, kinds
    received = [e["data"] for e in ledger if e["kind"] == "approval.received"]
    assert [r["verdict"] for r in received] == ["pass", "pass"], received  # alice once, bob once: no replays logged
    assert kinds[-1] == "run.promoted"
    names = task_runs(worker, run_id)
    assert names.count("train") == 1 and names.count("model-gates") == 1, names
    assert names.count("sign-and-stage") == 1 and names.count("resume") == 2, names
    signed = next(e for e in ledger if e["kind"] == "model.signed")["data"]
    assert signed["signer"] == {"mode": "pkcs11", "key": "pkcs11:token=airlock;object=model"}
    staged = next(e for e in ledger if e["kind"] == "registry.stage")["data"]["digest"]
    pointer = json.loads((work["registry"] / "production" / "CURRENT").read_text())
    assert pointer["digest"] == staged


def test_model_swapped_while_suspended_ends_the_run(work, worker):
    """The staged model is verified again from the registry at every start, not trusted from the first process: a
    weights file altered while the run was suspended ends the run at the approval that starts it again."""
    set_policy(work, "approval", "mode", '"suspend"')
    run_id = start_deployment_run(worker, work["policy"])
    wait_for_state(worker, run_id, suspended)
    # alice's approval, signed while the model was intact (the CLI refuses to sign for a model that does not verify)
    printed = approve(work, worker["api"], run_id, work["keys"] / "alice", "--print-only")
    assert printed.returncode == 0, printed.stderr
    fields = json.loads(printed.stdout)
    [obj] = [p for p in (work["registry"] / "staging").iterdir() if p.is_dir() and p.name != "runs"]
    weights = obj / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))

    from prefect.flow_runs import aresume_flow_run

    _with_api(worker["api"], lambda: aresume_flow_run(run_id, run_input=fields))  # as pasted into the UI
    state = wait_for_state(worker, run_id, lambda s: s.is_final())
    assert state.is_failed(), state.name
    failed = [e["data"]["reason"] for e in Ledger(work["ledger"]).entries() if e["kind"] == "run.failed"]
    assert failed and "model.safetensors of model" in failed[0] and "does not decrypt" in failed[0], failed
    assert not (work["registry"] / "production").exists()
    shutil.rmtree(obj)


def test_resume_refuses_a_changed_policy_trust_copy_or_staging_record(work, worker):
    """What a resumed run checks before it takes its staged model, each failing for its own attack: the policy edited
    while the run was suspended, a trust copy swapped in the run's directory (a staging record pointed at
    another run's model: tests/test_registry.py). (The run is suspended once by the worker; the checks are the flow's resume step itself.)"""
    from airlock import policy as _policy
    from airlock.errors import TrustRootError
    from flows._report import RunRecorder
    from flows.retrain import resume_staged

    set_policy(work, "approval", "mode", '"suspend"')
    # As .github/workflows/retrain.yml starts it: the actors in the run's tags (the worker has no GitHub environment).
    run_id = start_deployment_run(worker, work["policy"], ("github-actor:octo-bot", "github-triggering-actor:octocat"))
    wait_for_state(worker, run_id, suspended)
    pol = _policy.load(work["policy"])
    run_dir = pol.run.workdir / run_id
    ledger = Ledger(work["ledger"])

    def resume():
        return resume_staged.fn(
            _policy.load(work["policy"]), run_id, run_dir, RunRecorder(ledger, run_id, run_dir / "x"), ledger
        )

    _, _, _, staged, isolated = resume()  # as the worker would: verifies
    assert isolated and staged.provenance["run_id"] == run_id
    initiator = staged.provenance["initiator"]  # signed: who may not approve
    assert initiator["kind"] == "github" and initiator["actor"] == "octo-bot", initiator
    assert initiator["triggering_actor"] == "octocat", initiator

    text = work["policy"].read_text()
    set_policy(work, "approval", "ttl_seconds", "3600")
    with pytest.raises(TrustRootError, match="changed while the run was suspended"):
        resume()
    work["policy"].write_text(text)

    approvers = run_dir / "trust" / "approvers"
    original = approvers.read_bytes()
    approvers.write_bytes(original + b"mallory@example.com ssh-ed25519 AAAA roles=ml-lead,security\n")
    with pytest.raises(TrustRootError, match="trust.approvers is not what the run started with"):
        resume()
    approvers.write_bytes(original)
