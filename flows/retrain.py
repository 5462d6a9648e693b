"""The gated retrain. Read top to bottom, this is the security checklist a model passes to reach production.

0. Trust roots     - allowed signers, approvers and keys come from a protected ref or outside the repository.
   Sandbox         - every piece of team code runs in bubblewrap (no key, no trust file, no registry, no network,
                     nothing left running); where it cannot start, the run refuses (airlock/sandbox.py).
1. Commit gate     - every commit since production's training commit is signed by an allowed signer; clean tree;
                     the commit is exported blob by blob, running no filter or hook the repository configures.
2. Data gate       - training and golden data are byte-for-byte what their committed manifests say; their
                     content is as declared (shape, labels, label shift); the golden set is pinned.
   Environment gate - the trainer's packages are installed from the commit's lock, every wheel's hash checked
                     (no sdist, no option lines); each sandbox runs team code with that interpreter only.
3. Training        - the team's trainer runs in the sandbox on a snapshot of exactly what was verified.
   Artifact gate   - Airlock builds a new model directory from the trainer's weights and metadata alone; it holds
                     safetensors weights and plain metadata, nothing else (no pickle, no extras).
4. Model gates     - the data is verified again; accuracy, robustness (statistical), backdoor and golden regression
                     vs production are computed by Airlock's own evaluator, which asks the team's model (in its
                     sandbox) for answers and never imports its code; advisory privacy/extraction metrics recorded.
                     The evaluator starts beside the training and is handed the candidate only once it is built.
5. Signing         - the model directory (weights, metadata, provenance, AIBOM, evidence) is checked against its
                     layout and signed; staged (the registry verifies).
6. Approval        - the run pauses until signed statements, bound to this run and this model digest and not
                     expired, meet the approval policy (roles by different people: airlock/approvals.py), none
                     from an author, committer or signer of the range or whoever started the run; every input is
                     verified here (Prefect's API has no auth), after the trust roots and the policy are re-hashed
                     and revocations since the start are read. One signed rejection ends the run for good.
                     Suspend mode (a deployment): the process exits at each pause, and each approval starts the run
                     again, which verifies its staged model from the registry and goes on here (resume_staged).
7. Promotion       - the same re-check; the registry re-verifies signature and approvals against its own policy
                     under the trust roots in force now, then moves production atomically.

Every verdict, registry write, approval and promotion is appended to the hash-chained ledger, and every gate's
report is a Prefect artifact. A refusal at any step fails the run and nothing is promoted.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from prefect import flow, pause_flow_run, suspend_flow_run
from prefect import task as _task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from airlock import aibom, attest, checkpoints, gitutil, manifest, modeldir, modelsign, sandbox, trust
from airlock import policy as _policy
from airlock.errors import AirlockError, GateFailed, RegistryError, TrustRootError
from airlock.hashing import hash_tree
from airlock.ingest import provenance_entry
from airlock.ledger import Ledger
from airlock.policy import Policy
from flows import _report
from flows._report import RunRecorder, emit
from gates import approval, artifact, commit, data, data_validation, environment
from gates._result import GateResult, Verdict
from gates.model_gates import BLOCKING_RESULTS, SECTIONS
from registry import Registry

_report.install_log_filter()  # a refusal raised in a task: one line in the logs, not a traceback
_report.LISTENERS.append(_report.PrefectLog())  # the run's progress and verdicts in its Prefect log too


class ApprovalInput(RunInput):
    """What an approver sends to the paused run. Untrusted until gates.approval has verified it."""

    statement: str
    signature: str


@flow(name="airlock-retrain", persist_result=False)
def retrain(config: str):
    pol = _policy.load(config)
    run_id = str(flow_run.get_id())
    ledger = Ledger.from_policy(pol)
    run_dir = pol.run.workdir / run_id
    rec = RunRecorder(ledger, run_id, run_dir / "evidence")
    initiator = run_initiator()  # who started the run may not approve it
    # Suspend mode: each approval starts this flow again in a new process; the model this run already staged is
    # taken from the registry and verified again, and nothing before the approval step runs twice (see there).
    resuming = pol.approval.mode == "suspend" and _registry(pol, ledger).has_staged(run_id)
    if not resuming:
        ledger.append(
            "run.start",
            {
                "config": str(pol.source),
                "policy_digest": pol.digest,
                "protected_policy": pol.protected,
                "initiator": initiator,
            },
            run_id=run_id,
        )
        emit("start", run_id=run_id, run_dir=str(run_dir))
    try:
        #    The ledger still holds every checkpoint published outside it: a cut or rewritten log stops the run here.
        check_checkpoints(pol, ledger)
        if resuming:
            # Suspend mode, started again by an approval: the model this run staged, verified again from the registry
            # under the policy and trust roots the run started with (their digests are signed with the model).
            started, roots, pol, staged, isolated = resume_staged(pol, run_id, run_dir, rec, ledger)
        else:
            # 0. Trust roots: from a protected ref or from outside the repository, never from the commit under test.
            started = pol  # as loaded: re-hashed, and its roots re-read, at every decision
            roots = trust_roots(pol, run_dir)
            pol = trust.pin(pol, roots)
            #    The sandbox every piece of team code runs in: where it cannot start, refuse now (fail closed).
            box = sandbox_ready(pol)
            isolated = box.isolated

            # 1. Commit gate: every commit since production's signed by a trusted person, with git config nobody
            #    under test can change; the verified commit exported without running anything it configures.
            c = rec.record(commit_gate(pol, history_base(pol, ledger), roots))
            src = snapshot_code(pol, c.evidence["commit"], run_dir)
            #    Environment gate: the trainer's packages installed from the commit's lock, every wheel's hash checked;
            #    every sandbox then runs team code with that interpreter, Airlock's own packages hidden.
            env = rec.record(environment_gate(pol, src))
            box = dataclasses.replace(box, env=env.evidence.get("root", ""))

            # 2. Data gate: each dataset matches the manifest committed in the verified commit, then is snapshotted.
            datasets = {name: rec.record(data_gate(pol, name, src, run_dir)) for name in ("train", "golden")}

            #    The model-gate evaluator (step 4) starts now, beside the training: it needs nothing of the candidate
            #    to get ready, nor, with nothing in production, to train the golden stand-in. It is handed the
            #    candidate below; a refusal before that ends it with nothing judged.
            with start_model_gates(pol, box, src, run_dir, ledger) as evaluator:
                # 3. Training: the team's code, from the verified snapshot, in the sandbox. Airlock then builds a
                #    new model directory from its weights and metadata alone; the artifact gate judges that directory.
                model_dir = collect_model(train(pol, box, src, run_dir), run_dir)
                rec.record(artifact.check(model_dir))

                # 4. Model gates on data verified again: accuracy (test + golden), robustness (ART PGD sweep + APGD,
                #    Wilson lower bound, regression vs production), backdoor (Neural Cleanse vs production or a
                #    golden-set stand-in), golden-set regression (McNemar); advisories recorded, never blocking. The
                #    team's model answers from its sandbox; every verdict is computed outside it.
                recheck_data(datasets, src, run_dir)
                rec.record_all(model_gates(pol, evaluator, src, model_dir, run_dir))

            # 5. Signing: provenance + evidence + weights signed together, then staged (the registry verifies).
            staged = sign_and_stage(pol, box, run_id, run_dir, src, model_dir, c, datasets, rec, ledger, initiator)
            #    Mirrored into MLflow, if the policy names a server: a view of the registry, never an authority.
            mirror_to_mlflow(pol, ledger, staged.digest)
        rec.evidence_dir = run_dir / "evidence-after-signing"  # the signed directory is never touched again

        # 6. Approval: pause until people in the required roles - none of whom wrote the range or started the run -
        #    sign for this run and this model digest; one signed rejection ends the run and marks the model.
        approvals = collect_approvals(started, pol, roots, run_dir, run_id, staged, rec, ledger, isolated, resuming)

        # 7. Promotion: trust roots re-checked; the registry re-verifies everything itself and moves production.
        pointer = promote(started, pol, roots, run_dir, staged.digest, approvals, ledger)
        #    MLflow's production alias follows the registry's production pointer, and nothing else moves it.
        mirror_to_mlflow(pol, ledger, staged.digest)
    except (GateFailed, AirlockError) as e:
        ledger.append("run.failed", {"reason": e.one_line()}, run_id=run_id)
        publish_checkpoint(pol, ledger)
        emit("failed", reason=e.one_line())
        return Failed(message=e.one_line())
    except Pause:  # suspend mode: this process ends here, and the next approval starts the run again
        ledger.append("run.suspended", {"digest": staged.digest}, run_id=run_id)
        emit("progress", step="approval", message="suspended: no process waits; an approval starts the run again")
        raise
    ledger.append("run.promoted", {"digest": staged.digest}, run_id=run_id)
    publish_checkpoint(pol, ledger)
    summary = {
        "run_id": run_id,
        "model_digest": staged.digest,
        "production": pointer,
        "verdicts": [r.to_dict() for r in rec.results],
    }
    _report.publish_markdown(
        "run-summary", _report.summary_markdown(rec.results, f"Run {run_id}: promoted"), "gate verdicts of this run"
    )
    emit("promoted", **summary)
    return Completed(message=f"promoted {staged.digest}", data=summary)


# -- steps -----------------------------------------------------------------------------------------------------
# Each step runs as a Prefect task (visible in the UI); the decisions themselves are in gates/.


def task(name: str):
    # No caching: a security check is never skipped because an earlier run already passed it.
    return _task(name=name, cache_policy=NO_CACHE, retries=0)


def _fresh(path: Path) -> Path:
    """A run's working directory that must start empty (a retried step never builds on what it left)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    return path


def check_checkpoints(pol: Policy, ledger: Ledger) -> None:
    if pol.ledger.checkpoints is not None:
        n = checkpoints.check(ledger, pol.ledger.checkpoints)
        emit(
            "progress",
            step="trust",
            message=f"ledger holds all {n} checkpoint(s) published in {pol.ledger.checkpoints}",
        )


def publish_checkpoint(pol: Policy, ledger: Ledger) -> None:
    """The ledger's head, signed, to the checkpoint ref (ledger.checkpoints): what a later cut would contradict."""
    if pol.ledger.checkpoints is None:
        return
    try:
        cp = checkpoints.publish(ledger, pol.ledger.checkpoints)
        emit("progress", step="ledger", message=f"checkpoint seq {cp['seq']} published to {pol.ledger.checkpoints}")
    except AirlockError as e:  # the run's outcome stands; the missing checkpoint is said, and the next one covers it
        emit("progress", step="ledger", message=f"WARNING: no ledger checkpoint published: {e.one_line()}")


@task(name="trust-roots")
def trust_roots(pol: Policy, run_dir: Path) -> trust.TrustRoots:
    roots = trust.resolve(pol, run_dir / "trust")
    emit("progress", step="trust", message=f"trust roots from {roots.source}")
    return roots


@task(name="sandbox")
def sandbox_ready(pol: Policy) -> sandbox.Sandbox:
    box = sandbox.Sandbox.from_policy(pol)
    box.check()
    if box.isolated:
        emit(
            "progress",
            step="sandbox",
            message="team code runs in bubblewrap: no keys, trust files, registry, "
            "ledger or network; nothing survives it",
        )
    else:
        emit(
            "progress",
            step="sandbox",
            message="WARNING: sandbox.mode = environment — team code runs without "
            "Airlock's sandbox (recorded in the provenance, shown to approvers)",
        )
    return box


def protected_paths(pol: Policy) -> dict[str, Path | None]:
    """What team code must never see, checked against every bind before a sandbox starts."""
    t = pol.trust
    prefect_home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    return {
        "the policy": pol.source,
        "the allowed signers": t.allowed_signers,
        "the approvers": t.approvers,
        "the model-signing public key": t.model_signing_public_key,
        "the revoked keys": t.revoked_keys,
        "the GnuPG home": t.gpg_home,
        "the model-signing key": pol.signing.private_key
        or (Path(os.environ["AIRLOCK_SIGNING_KEY"]) if os.environ.get("AIRLOCK_SIGNING_KEY") else None),
        "the registry": pol.registry.path,
        "the ledger": pol.ledger.path,
        "the ledger key": pol.ledger.key
        or (Path(os.environ["AIRLOCK_LEDGER_KEY"]) if os.environ.get("AIRLOCK_LEDGER_KEY") else None),
        "the Prefect home": Path(prefect_home),
        "the training repository's .git": pol.repo.path / ".git",
    }


def history_base(pol: Policy, ledger: Ledger) -> str | None:
    """Where the signed history must start: production's training commit (from its verified, signed provenance),
    else the policy's base commit, else the root."""
    prod = _registry(pol, ledger).current("production")
    if prod is None:
        return pol.repo.base_commit
    return prod.provenance.get("commit", {}).get("commit") or pol.repo.base_commit


@task(name="commit-gate")
def commit_gate(pol: Policy, base: str | None, roots: trust.TrustRoots) -> GateResult:
    r = commit.check(pol.repo.path, commit.SignerPolicy.from_policy(pol), base=base)
    return dataclasses.replace(r, evidence={**r.evidence, "trust_roots": roots.evidence()})


@task(name="snapshot-code")
def snapshot_code(pol: Policy, sha: str, run_dir: Path) -> Path:
    """Export exactly the verified commit, blob by blob (no filter, hook or attribute of the repository runs):
    the working tree may change after the gate, the export cannot."""
    src = _fresh(run_dir / "src")
    gitutil.export_commit(pol.repo.path, sha, src)
    return src


@task(name="environment-gate")
def environment_gate(pol: Policy, src: Path) -> GateResult:
    lock = pol.training.lock
    if lock:
        emit("progress", step="environment", message=f"trainer environment from {lock} (hashes required)")
    return environment.check(
        lock,
        src,
        pol.training.environment_cache(),
        on_line=lambda line: emit("progress", step="environment", message=f"  {line}"),
    )


@task(name="data-gate")
def data_gate(pol: Policy, name: str, src: Path, run_dir: Path) -> GateResult:
    ds = getattr(pol.data, name)
    top = gitutil.toplevel(pol.repo.path)
    try:
        rel = ds.manifest.resolve().relative_to(top)
    except ValueError:
        return GateResult.fail(
            f"data:{name}",
            f"manifest {ds.manifest} is not in the training repository — commit it "
            "there so that the commit signature covers it",
            code="data.manifest_outside_repo",
        )
    manifest = src / rel  # the manifest as committed in the verified commit, not the working tree
    result = data.check(name, ds.dir, manifest)
    if not result.passed:
        return result
    # Snapshot, then verify the copy: training reads what was verified, even if the source changes later.
    dest = _fresh(run_dir / "data" / name)
    shutil.copytree(ds.dir, dest)
    again = data.check(name, dest, manifest)
    if not again.passed:
        return GateResult.fail(
            again.gate,
            f"dataset '{name}' changed while it was copied: {again.reason}",
            evidence=again.evidence,
            code="data.changed_during_copy",
        )
    evidence = dict(result.evidence, snapshot=str(dest), manifest_in_commit=str(rel))
    # Content, judged on the snapshot training reads: shape, dtype, value range and label set as the policy declares;
    # label shift against the previous version (from the history committed beside the manifest); the pinned root
    # digest (a golden set swapped together with its manifest in a signed commit).
    v = data_validation.check_manifest(name, dest, manifest, ds.validation, ds.pinned_root_digest)
    evidence["validation"] = v.evidence
    metrics = {**result.metrics, **v.metrics}
    if not v.passed:
        return GateResult.fail(result.gate, v.reason, metrics=metrics, evidence=evidence, code=v.code)
    return GateResult.ok(result.gate, f"{result.reason}; {v.reason}", metrics=metrics, evidence=evidence)


@task(name="train")
def train(pol: Policy, box: sandbox.Sandbox, src: Path, run_dir: Path) -> Path:
    out = _fresh(run_dir / "out")
    job = box.job(
        "trainer",
        ro={"src": src, "data": run_dir / "data" / "train"},
        rw={"out": out},
        cwd="src",
        timeout=pol.training.timeout_seconds,
        threads=pol.training.threads,
    )
    job.refuse_exposure(protected_paths(pol))
    cmd = [*pol.training.command, "--data", job.path("data"), "--out", job.path("out")]
    shown = " ".join("python" if c == "{python}" else c for c in pol.training.command)
    emit(
        "progress",
        step="train",
        message=f"training: {shown} ({'sandboxed' if box.isolated else 'unsandboxed'}, no secrets)",
    )
    seconds = job.run(cmd, on_line=lambda line: emit("progress", step="train", message=f"  trainer | {line}"))
    emit("progress", step="train", message=f"training finished in {seconds:.1f} s")
    return out


@task(name="collect-model")
def collect_model(out: Path, run_dir: Path) -> Path:
    """A new directory with exactly the trainer's weights and metadata: only Airlock writes what gets signed."""
    return modeldir.assemble(out, _fresh(run_dir / "model"))


@task(name="data-recheck")
def recheck_data(datasets: dict[str, GateResult], src: Path, run_dir: Path) -> None:
    """The snapshots the model gates read are still exactly what the data gate verified."""
    for name, r in datasets.items():
        again = data.check(name, run_dir / "data" / name, src / r.evidence["manifest_in_commit"])
        if not again.passed:
            raise GateFailed(f"dataset '{name}' changed after the data gate: {again.reason}")


@task(name="model-gates-start")
def start_model_gates(pol, box: sandbox.Sandbox, src: Path, run_dir: Path, ledger: Ledger) -> sandbox.TrustedProcess:
    """Airlock's evaluator, started before the training: it imports, starts production's oracle and, with nothing in
    production, trains the golden stand-in meanwhile; :func:`model_gates` hands it the candidate."""
    work = _fresh(run_dir / "model-gates")
    work.mkdir(parents=True)
    model_dir = run_dir / "model"  # where collect_model builds the candidate
    req = {
        "src": str(src),
        "candidate": "stdin",
        "workdir": str(work),
        "train_dir": str(run_dir / "data" / "train"),
        "golden_dir": str(run_dir / "data" / "golden"),
        "threads": pol.training.threads,
        "seed": pol.evaluation.seed,
        "timeout": pol.training.timeout_seconds,
        "training_command": pol.training.command,
        "fork": pol.training.fork,
        "parallel": min(2, os.cpu_count() or 1),
        "sandbox": dataclasses.asdict(box),
        "params": {name: getattr(pol, name).model_dump() for name in SECTIONS},
    }
    prod = production_reference(pol, work, ledger)
    if prod:
        req.update(prod)
    # The evaluator's sandboxes see the exports, the model directories and its own work directory: nothing protected.
    box.refuse_exposure("model code", [src, model_dir, work], protected_paths(pol))
    request = work / "request.json"
    request.write_text(json.dumps(req, indent=2))
    if not prod:
        emit("progress", step="model-gates", message="evaluator started beside the training (golden stand-in first)")
    return sandbox.TrustedProcess(
        ["{python}", "-P", "-m", "flows._evaluate", str(request), str(work / "results.json")],
        cwd=run_dir,
        home=run_dir / "home-eval",
        # It waits through the training, then evaluates: each bounded by the training timeout.
        timeout=2 * pol.training.timeout_seconds,
        what="model-gate evaluator",
        threads=pol.training.threads,
        on_line=lambda line: emit("progress", step="model-gates", message=f"  evaluator | {line}"),
    )


@task(name="model-gates")
def model_gates(pol, evaluator: sandbox.TrustedProcess, src: Path, model_dir: Path, run_dir: Path) -> list[GateResult]:
    """Accuracy, robustness, backdoor, golden regression and advisories, computed by Airlock's evaluator; the
    team's model answers from its sandbox."""
    work = run_dir / "model-gates"
    req = json.loads((work / "request.json").read_text())
    prod = req.get("prod_digest")
    against = f"production {prod[:19]}…" if prod else "a golden-set stand-in (nothing in production)"
    emit(
        "progress",
        step="model-gates",
        message=f"accuracy, robustness, backdoor, golden regression against {against} "
        "(the model answers from its sandbox)",
    )
    evaluator.send(json.dumps({"model": str(model_dir)}))
    evaluator.wait()
    result_file = work / "results.json"
    if not result_file.is_file():
        raise GateFailed("the model-gate evaluator ended without results — see the run's log above")
    out_json = json.loads(result_file.read_text())
    results = [GateResult.from_dict(d) for d in out_json["results"]]
    curve = out_json.get("plots", {}).get("robustness")
    if curve and Path(curve).exists():
        rec_dir = run_dir / "evidence"
        rec_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(curve, rec_dir / "robustness-curve.png")
        robust = next((r for r in results if r.gate == "robustness"), None)
        if robust is not None:
            _report.publish_curve(Path(curve), robust)
    return [_trace_suspicious(r, src, pol) for r in results]


def production_reference(pol: Policy, work: Path, ledger: Ledger) -> dict | None:
    """Production's model (verified, then copied out of the registry: no sandbox sees the registry), the export of
    its training commit, and its cached backdoor norms."""
    prod = _registry(pol, ledger).current("production")
    if prod is None:
        return None
    prod_src = _fresh(work / "src-production")
    gitutil.export_commit(pol.repo.path, prod.provenance["commit"]["commit"], prod_src)
    prod_model = modeldir.assemble(prod.model_dir, work / "production-model")
    cached = None
    bd = prod.model_dir / "evidence" / "backdoor.json"
    if bd.exists():
        cached = json.loads(bd.read_text()).get("evidence", {}).get("candidate")  # signed with production
    return {
        "prod_model": str(prod_model),
        "prod_src": str(prod_src),
        "prod_backdoor": cached,
        "prod_digest": prod.digest,
    }


def _trace_suspicious(result: GateResult, src: Path, pol) -> GateResult:
    """Spectral signatures name rows of train_x.npy: trace each to its manifest file and provenance (batch)."""
    suspicious = result.evidence.get("suspicious") if isinstance(result.evidence, dict) else None
    if not suspicious:
        return result
    try:
        top = gitutil.toplevel(pol.repo.path)
        m = manifest.load(src / pol.data.train.manifest.resolve().relative_to(top))
    except Exception:  # noqa: BLE001 - advisory: report untraced rather than fail
        return result
    entry = m["files"].get("train_x.npy", {})
    batch = entry.get("batch")
    source = (m.get("batches") or {}).get(batch, {}).get("source") if batch else None
    traced = [
        dict(
            s,
            file="train_x.npy",
            row=s.get("index"),
            sha256=entry.get("sha256"),
            batch=batch,
            source=source,
            manifest_root_digest=m["root_digest"],
        )
        for s in suspicious
    ]
    return dataclasses.replace(result, evidence={**result.evidence, "suspicious": traced})


def trainer_environment(rec: RunRecorder) -> dict:
    env = next((r for r in rec.results if r.gate == environment.GATE), None)
    if env is None:  # the flow records the gate before training: an Airlock bug, not a run to sign
        raise GateFailed("no environment gate result was recorded — nothing was signed")
    return {k: v for k, v in env.evidence.items() if k != "root"}


@task(name="sign-and-stage")
def sign_and_stage(
    pol,
    box: sandbox.Sandbox,
    run_id,
    run_dir,
    src: Path,
    model_dir: Path,
    c: GateResult,
    datasets: dict,
    rec: RunRecorder,
    ledger: Ledger,
    initiator: dict,
):
    signer = modelsign.signer(pol)  # signing.mode: a key file, a key inside a PKCS#11 token, or a certificate
    provenance = {
        "format": "airlock-provenance/v1",
        "run_id": run_id,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "policy": {"path": str(pol.source), "digest": pol.digest, "protected": pol.protected},
        "commit": {
            k: c.evidence.get(k)
            for k in ("commit", "signer", "key_fingerprint", "author", "subject", "repo", "identities", "range")
        },
        "initiator": initiator,
        # The trust roots the run started with (source, sha256 of each): a resumed run must find exactly these.
        "trust_roots": c.evidence.get("trust_roots"),
        # Which files, from where: each file's sha256 and batch, each batch's source (read by `airlock data trace`).
        "datasets": {
            name: provenance_entry(
                manifest.load(src / r.evidence["manifest_in_commit"]), r.evidence["manifest_in_commit"]
            )
            for name, r in datasets.items()
        },
        # The trainer's environment: the lock's digest, the installed tree's digest, every package and its hashes
        # (gates/environment.py); "lock": null when team code ran in Airlock's own environment.
        "trainer": {
            "command": pol.training.command,
            "metadata": "training.json",
            "environment": trainer_environment(rec),
        },
        "signer": signer.describe(),
        # Where team code ran: an unsandboxed run (sandbox.mode = environment) says so in what approvers see.
        "sandbox": box.describe(),
        "gates": [r.to_dict() | {"evidence": None} for r in rec.results],
    }
    (model_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    # AI bill of materials: data hashes, preprocessing, hyperparameters, commit, packages (signed with the model).
    committed = {name: manifest.load(src / r.evidence["manifest_in_commit"]) for name, r in datasets.items()}
    metrics = {
        f"{r.gate}:{k}": v
        for r in rec.results
        if r.gate in BLOCKING_RESULTS or r.verdict is Verdict.ADVISORY
        for k, v in r.metrics.items()
    }
    aibom.write(model_dir, provenance, committed, metrics)
    modeldir.add_evidence(model_dir, sorted((run_dir / "evidence").iterdir()))
    # Smuggled files: what is signed is exactly the layout Airlock builds.
    odd = modeldir.unexpected(model_dir)
    if odd:
        raise GateFailed(f"the model directory holds unexpected entries: {', '.join(odd[:5])} — nothing was signed")
    sig = run_dir / "model.sig"
    modelsign.sign(model_dir, sig, signer)
    # Signed evidence about this digest: an in-toto statement per gate, SLSA provenance, a verification summary.
    statements = attest.build(hash_tree(model_dir).root_digest, provenance, gate_thresholds(pol))
    modelsign.sign(attest.write(_fresh(run_dir / attest.DIR), statements), run_dir / attest.SIG, signer)
    ledger.append(
        "model.signed",
        {
            "signature": str(sig),
            "public_key": str(pol.trust.model_signing_public_key),
            "signer": signer.describe(),
        },
        run_id=run_id,
    )
    registry = _registry(pol, ledger)
    staged = registry.stage(model_dir, sig, run_id)
    # A signer that staging accepts and production does not (a [production] table in the signer policy): stop now,
    # before anyone is asked to approve a model that could never be promoted.
    try:
        registry.check_signer_for(staged, "production")
    except RegistryError as e:
        raise GateFailed(e.what, e.hint) from None
    emit("staged", digest=staged.digest, path=str(staged.path))
    return staged


@task(name="resume")
def resume_staged(pol: Policy, run_id: str, run_dir: Path, rec: RunRecorder, ledger: Ledger):
    """Suspend mode: at each approval the flow runs again from the top, in a new process (maybe in another pod).
    Training, model gates and signing are not run again, and nothing is taken from a cache either: the model this run
    staged is read from the registry and verified again - signature by the trusted key, digest over every file, this
    run's id in its signed provenance - under the policy and the trust roots the run started with."""
    prior = trust.reopen(pol, run_dir / "trust")
    # A model-signing key swapped in the run's copies would vouch for a swapped model: it must be the source's too.
    now = trust.resolve(pol, run_dir / "trust-now")
    if prior.digests.get("model_signing_public_key") != now.digests.get("model_signing_public_key"):
        raise TrustRootError(
            "the model-signing public key is not the one this run started with",
            "nothing was approved or promoted; find who changed it, then start a new run",
        )
    pinned = trust.pin(pol, prior)
    registry = _registry(pinned, ledger)
    staged = registry.staged_for_run(run_id)  # raises: swapped, altered or another run's model
    prov = staged.provenance
    # A policy edited while the run was suspended: its digest at the start is signed with the model.
    recorded = prov.get("policy")
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("digest") != pol.digest or recorded.get("protected") != pol.protected:
        raise TrustRootError(
            f"the policy {pol.source} changed while the run was suspended "
            f"({str(recorded.get('digest'))[:19]}… → {pol.digest[:19]}…)",
            "nothing was approved or promoted; start a new run under the new policy",
        )
    # Trust files swapped in the run's copies (or, where they were gone, changed at the source) since the start.
    roots = trust.require_recorded(prior, prov.get("trust_roots"))
    # A rejected model stays rejected, whatever runs it again.
    if registry.rejection(staged.digest) is not None:
        raise GateFailed(f"model {staged.digest} was rejected: it is never promoted")
    gates = prov.get("gates")
    gates = gates if isinstance(gates, list) else []
    rec.results = [GateResult.from_dict({**g, "evidence": {}}) for g in gates]  # as signed: for the form and summary
    isolated = bool((prov.get("sandbox") or {}).get("isolated"))
    ledger.append("run.resumed", {"digest": staged.digest, "policy_digest": pol.digest}, run_id=run_id)
    emit(
        "progress",
        step="resume",
        message=f"resumed: the model {staged.digest[:19]}… this run staged verifies; training, model gates and "
        "signing are not run again",
    )
    return pol, roots, pinned, staged, isolated


def gate_thresholds(pol: Policy) -> dict[str, dict]:
    """What each model gate's statement records as its thresholds: the policy section that configures it."""
    from gates.model_gates import MODEL_GATES

    return {r: getattr(pol, g.section).model_dump(mode="json") for g in MODEL_GATES for r in g.results}


def run_initiator() -> dict:
    """Who started this run: the GitHub actor (and the person who triggered it, when a bot or a schedule did), or
    the Prefect user where the server knows one, else the local user. Recorded at the start and signed.

    A deployment run started by .github/workflows/retrain.yml runs on a worker, without GitHub's environment: the
    workflow names the actors in the run's tags. Whoever can create runs can write tags, but the initiator only ever
    keeps people *out* of approving, so a forged tag can block an approver, never let one in."""
    import getpass

    if os.environ.get("GITHUB_ACTIONS") == "true":
        return {
            "kind": "github",
            "actor": os.environ.get("GITHUB_ACTOR", ""),
            "triggering_actor": os.environ.get("GITHUB_TRIGGERING_ACTOR", ""),
            "event": os.environ.get("GITHUB_EVENT_NAME", ""),
        }
    tags = {k: v for k, _, v in (str(t).partition(":") for t in (getattr(flow_run, "tags", None) or []))}
    if tags.get("github-actor") or tags.get("github-triggering-actor"):
        return {
            "kind": "github",
            "actor": tags.get("github-actor", ""),
            "triggering_actor": tags.get("github-triggering-actor", ""),
            "event": tags.get("github-event", ""),
            "via": "run tags",
        }
    created_by = getattr(flow_run, "created_by", None)  # Prefect Cloud records who created the run
    if isinstance(created_by, dict) and created_by.get("display_value"):
        return {"kind": "prefect", "actor": str(created_by["display_value"])}
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = ""
    return {"kind": "local", "actor": user}


# Submissions whose signature did not verify (junk written straight to the Prefect API) are refused and logged, but
# do not use up the run's attempts; this bounds how many of them one run reads at all.
MAX_PAUSES = 1000
_UNCOUNTED = ("approval.malformed", "approval.bad_signature", "approval.old_version")


def collect_approvals(
    started,
    pol: Policy,
    roots: trust.TrustRoots,
    run_dir: Path,
    run_id: str,
    staged,
    rec: RunRecorder,
    ledger: Ledger,
    isolated: bool,
    resuming: bool = False,
) -> list[approval.Approval]:
    """The pause. Runs in the flow body (Prefect cannot pause inside a task).

    In suspend mode the process exits at each pause, and each approval starts the flow again: the pauses that already
    fired hand back their stored inputs in order, and each is verified again (an approval that expired, or whose
    key was revoked, while the run was suspended no longer counts); only a verdict that changed is logged again."""
    registry = _registry(pol, ledger)
    policy = registry.approval_policy
    ctx = registry.approval_context(staged)  # bindings from the signed provenance, as the registry will judge them
    digest = staged.digest
    suspend = pol.approval.mode == "suspend"
    command = f"airlock approve {run_id} --key ~/.ssh/id_ed25519 --config {pol.source}"
    warning = (
        ""
        if isolated
        else (
            "**WARNING: team code ran without Airlock's sandbox** (sandbox.mode = "
            "environment): approve only if the pod it ran in held no secret.\n\n"
        )
    )
    description = _report.form_markdown(rec.results, digest, command, warning)
    needed = "; ".join(policy.outcome([]).missing)
    if not resuming:
        ledger.append(
            "approval.requested",
            {"digest": digest, "policy": policy.to_dict(), "needed": needed, "command": command},
            run_id=run_id,
        )
    emit("awaiting", run_id=run_id, digest=digest, command=command, needed=needed)
    logged = _logged_verdicts(ledger, run_id) if resuming else {}
    accepted: list[approval.Verified] = []
    # The approval window: from the signed model's creation in suspend mode (the same in every process), else from now.
    deadline = (
        _created_at(staged) + pol.approval.timeout_seconds if suspend else time.time() + pol.approval.timeout_seconds
    )
    attempts = 0
    for pause in range(MAX_PAUSES):
        if policy.outcome(accepted).satisfied or attempts >= pol.approval.max_attempts:
            break
        remaining = int(deadline - time.time())
        if remaining <= 0:
            break
        try:
            form = ApprovalInput.with_initial_data(description=description)
            if suspend:
                raw = suspend_flow_run(wait_for_input=form, timeout=remaining, key=f"approval-{pause}")
            else:
                raw = pause_flow_run(  # type: ignore[call-overload]  # a float poll_interval: see below
                    wait_for_input=form,
                    timeout=remaining,
                    # Prefect sleeps this with time.sleep: a fraction of a second works (its annotation says int).
                    poll_interval=max(0.1, float(pol.approval.poll_seconds)),
                    key=f"approval-{pause}",
                )
            submitted = approval.Approval(str(raw.statement), str(raw.signature))
            result, verified = approval.verify_one(submitted, ctx, accepted)
        except FlowPauseTimeout:
            break
        except (TypeError, ValueError) as e:
            # Malformed input written straight to the API (pydantic's ValidationError is a ValueError; a JSON value
            # that is not an object is a TypeError): a refusal, and the run keeps waiting. Anything else is a bug
            # or a broken trust root, and ends the run.
            submitted = approval.Approval(f"<invalid input: {type(e).__name__}>", "")
            result = GateResult.fail(
                approval.GATE, f"invalid approval input: {type(e).__name__}", code="approval.malformed"
            )
            verified = None
        if verified is not None:
            # Decision time: the run's trust copies and the policy unchanged, and the approval still valid under the
            # trust roots in force now (a key revoked while the run waited is refused here).
            try:
                result, verified = _under_roots_now(started, roots, run_dir, submitted, ctx, accepted, result, verified)
            except AirlockError as e:  # the run ends here: the approver hears why, not a timeout
                ended = GateResult.fail(approval.GATE, e.one_line(), code="approval.trust_changed")
                ledger.append("approval.received", {**ended.to_dict(), "pause": pause}, run_id=run_id)
                _publish_approval_verdict(submitted, ended)
                raise
        if result.code not in _UNCOUNTED:
            attempts += 1
        if logged.get(pause) != result.code:  # a replayed input (suspend mode) is logged only if its verdict changed
            ledger.append("approval.received", {**result.to_dict(), "pause": pause}, run_id=run_id)
            _publish_approval_verdict(submitted, result)
            emit("approval", result=result)
        if verified is None:
            continue  # refused: say why, keep waiting for a valid one
        accepted.append(verified)
        if verified.decision == "reject":
            # One valid signed rejection ends the run, and the staged model is marked: it is never promoted.
            registry.reject(digest, verified.approval)
            raise GateFailed(f"{verified.approver} rejected the model: {verified.reason or 'no reason given'}")
    final = approval.check([v.approval for v in accepted], ctx, policy)
    if not final.passed:
        ledger.append("approval.timeout", {"accepted": [v.approver for v in accepted]}, run_id=run_id)
        raise GateFailed(
            f"approval gate refused: {final.reason} before the approval window closed (or "
            f"{pol.approval.max_attempts} signed submissions were used up) — nothing was promoted; start a new run"
        )
    rec.record(final)
    return [v.approval for v in accepted]


def _logged_verdicts(ledger: Ledger, run_id: str) -> dict[int, str]:
    """The verdict code logged for each pause of this run so far (suspend mode replays them)."""
    out: dict[int, str] = {}
    for e in ledger.entries():
        data = e.get("data") or {}
        if e.get("run_id") == run_id and e.get("kind") == "approval.received" and isinstance(data.get("pause"), int):
            out[data["pause"]] = str(data.get("code") or "")
    return out


def _created_at(staged) -> float:
    """When the run signed its model (its signed provenance): where suspend mode's approval window starts."""
    try:
        return _dt.datetime.fromisoformat(str(staged.provenance["created_at"])).timestamp()
    except (KeyError, ValueError) as e:
        raise GateFailed(f"the staged model's provenance has no valid created_at ({type(e).__name__})") from None


def _under_roots_now(started, roots, run_dir: Path, submitted, ctx, accepted, result, verified):
    now = trust.at_decision(started, roots, run_dir / "trust-now")  # raises: a changed copy or policy ends the run
    again, v = approval.verify_one(
        submitted, dataclasses.replace(ctx, approvers_file=now.approvers, revoked_keys=now.revoked_keys), accepted
    )
    if v is None:
        return GateResult.fail(
            approval.GATE,
            f"{again.reason} (under the trust roots in force now)",
            evidence=again.evidence,
            code=again.code,
        ), None
    return result, verified


@task(name="promote")
def promote(
    started,
    pol: Policy,
    roots: trust.TrustRoots,
    run_dir: Path,
    digest: str,
    approvals: list[approval.Approval],
    ledger: Ledger,
) -> dict:
    now = trust.at_decision(started, roots, run_dir / "trust-now")
    # The approvals were collected under the run's trust roots: they must still meet them ...
    verdict = _registry(pol, ledger).check_approvals(digest, approvals)
    if not verdict.ok:
        raise RegistryError(f"promotion refused: {verdict.reason}", "collect valid approvals in a new run")
    # ... and the registry re-verifies everything under the roots in force now (revocations since the start).
    in_force = Registry.from_policy(pol, ledger, roots=now)
    pointer = in_force.promote(digest, approvals)
    emit("progress", step="promote", message=f"production now {digest}")
    return pointer


@task(name="mlflow-mirror")
def mirror_to_mlflow(pol: Policy, ledger: Ledger, digest: str) -> None:
    """Mirror the model (and the production alias) into MLflow. A failure is recorded and shown, and changes
    nothing else: MLflow is a view, so it can neither block nor permit a promotion (registry/mlflow_mirror.py)."""
    from registry import mlflow_mirror

    mirror = mlflow_mirror.Mirror.from_policy(pol)
    if mirror is None:
        return
    try:
        report = mlflow_mirror.sync(mirror, _registry(pol, ledger), ledger, digests=[digest])
    except AirlockError as e:
        ledger.append("mlflow.mirror.failed", {"digest": digest, "reason": e.one_line()})
        emit("progress", step="mlflow", message=f"MLflow mirror not updated ({e.one_line()}); run: airlock mlflow sync")
        return
    emit("progress", step="mlflow", message=f"MLflow: {mirror.model_name}@production = version {report.alias}")


def _publish_approval_verdict(submitted: approval.Approval, result: GateResult) -> None:
    """The approver's CLI finds its verdict under a key derived from the statement it signed."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key=verdict_key(submitted.statement),
        markdown=_report.gate_markdown(result),
        description=json.dumps({"accepted": result.passed, "reason": result.reason}),
    )


def verdict_key(statement: str) -> str:
    return "approval-" + hashlib.sha256(statement.encode()).hexdigest()[:32]


def _registry(pol: Policy, ledger: Ledger) -> Registry:
    return Registry.from_policy(pol, ledger)
