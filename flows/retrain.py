"""The gated retrain. Read top to bottom, this is the security checklist a model passes to reach production.

1. Commit gate     - the training code is HEAD of the repo, signed by an allowed signer; the tree is clean.
2. Data gate       - training and golden data are byte-for-byte what their committed manifests say.
3. Training        - the team's trainer runs on a snapshot of exactly what was verified, with no secrets.
   Artifact gate   - it produced safetensors weights and plain metadata, nothing else (no pickle, no extras).
4. Evaluation gate - clean, golden-set and PGD robust accuracy meet the policy (team code runs sandboxed).
5. Signing         - the model directory (weights, metadata, provenance, AIBOM, evidence) is signed; staged.
6. Dual approval   - the run pauses until a quorum of distinct approvers sign statements bound to this run
                     and this model digest; every input is verified here (Prefect's API has no auth).
7. Promotion       - the registry re-verifies signature and approvals, then moves production atomically.

Every verdict, registry write, approval and promotion is appended to the hash-chained ledger, and every gate's
report is a Prefect artifact. A refusal at any step fails the run and nothing is promoted.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import time
from pathlib import Path

from prefect import flow, pause_flow_run
from prefect import task as _task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from airlock import aibom, gitutil, isolation, manifest, modelsign
from airlock import policy as _policy
from airlock.errors import AirlockError, GateFailed
from airlock.ledger import Ledger
from flows import _report
from flows._report import RunRecorder, emit
from gates import approval, artifact, commit, data
from gates._result import GateResult
from registry import Registry


class ApprovalInput(RunInput):
    """What an approver sends to the paused run. Untrusted until gates.approval has verified it."""

    statement: str
    signature: str


@flow(name="airlock-retrain", persist_result=False)
def retrain(config: str):
    pol = _policy.load(config)
    run_id = str(flow_run.get_id())
    ledger = Ledger(pol.ledger.path)
    run_dir = pol.run.workdir / run_id
    rec = RunRecorder(ledger, run_id, run_dir / "model" / "evidence")
    ledger.append("run.start", {"config": str(pol.source), "policy_digest": pol.digest}, run_id=run_id)
    emit("start", run_id=run_id, run_dir=str(run_dir))
    try:
        # 1. Commit gate: signed by a trusted person, verified with git config nobody under test can change.
        c = rec.record(commit_gate(pol))
        src = snapshot_code(pol, c.evidence["commit"], run_dir)

        # 2. Data gate: each dataset matches the manifest committed in the verified commit, then is snapshotted.
        datasets = {name: rec.record(data_gate(pol, name, src, run_dir)) for name in ("train", "golden")}

        # 3. Training: the team's code, from the verified snapshot, in a subprocess with no keys or tokens.
        out = train(pol, src, run_dir)
        rec.record(artifact.check(out))

        # 4. Evaluation: accuracy, golden set and adversarial robustness, the model loaded in a sandbox.
        rec.record(evaluate(pol, src, out, run_dir))

        # 5. Signing: provenance + evidence + weights signed together, then staged (the registry verifies).
        staged = sign_and_stage(pol, run_id, run_dir, src, out, c, datasets, rec, ledger)
        rec.evidence_dir = run_dir / "evidence-after-signing"     # the signed directory is never touched again

        # 6. Dual approval: pause until a quorum of distinct approvers signs for this run and this model digest.
        approvals = collect_approvals(pol, run_id, staged.digest, c.evidence.get("signer"), rec, ledger)

        # 7. Promotion: the registry re-verifies everything itself and moves production atomically.
        pointer = promote(pol, staged.digest, approvals, ledger)
    except (GateFailed, AirlockError) as e:
        ledger.append("run.failed", {"reason": e.one_line()}, run_id=run_id)
        emit("failed", reason=e.one_line())
        return Failed(message=e.one_line())
    ledger.append("run.promoted", {"digest": staged.digest}, run_id=run_id)
    summary = {"run_id": run_id, "model_digest": staged.digest, "production": pointer,
               "verdicts": [r.to_dict() for r in rec.results]}
    _report.publish_markdown("run-summary", _report.summary_markdown(rec.results, f"Run {run_id}: promoted"),
                             "gate verdicts of this run")
    emit("promoted", **summary)
    return Completed(message=f"promoted {staged.digest}", data=summary)


# -- steps -----------------------------------------------------------------------------------------------------
# Each step runs as a Prefect task (visible in the UI); the decisions themselves are in gates/.

def task(name: str):
    # No caching: a security check is never skipped because an earlier run already passed it.
    return _task(name=name, cache_policy=NO_CACHE, retries=0)


@task(name="commit-gate")
def commit_gate(pol) -> GateResult:
    return commit.check(pol.repo.path, pol.trust.allowed_signers, pol.trust_files())


@task(name="snapshot-code")
def snapshot_code(pol, sha: str, run_dir: Path) -> Path:
    """Export exactly the verified commit: the working tree may change after the gate, the export cannot."""
    src = run_dir / "src"
    if src.exists():
        shutil.rmtree(src)
    gitutil.export_commit(pol.repo.path, sha, src)
    return src


@task(name="data-gate")
def data_gate(pol, name: str, src: Path, run_dir: Path) -> GateResult:
    ds = getattr(pol.data, name)
    top = gitutil.toplevel(pol.repo.path)
    try:
        rel = ds.manifest.resolve().relative_to(top)
    except ValueError:
        return GateResult.fail(f"data:{name}", f"manifest {ds.manifest} is not in the training repository — commit it "
                                               "there so that the commit signature covers it")
    manifest = src / rel          # the manifest as committed in the verified commit, not the working tree
    result = data.check(name, ds.dir, manifest)
    if not result.passed:
        return result
    # Snapshot, then verify the copy: training reads what was verified, even if the source changes later.
    dest = run_dir / "data" / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ds.dir, dest)
    again = data.check(name, dest, manifest)
    if not again.passed:
        return GateResult.fail(again.gate, f"dataset '{name}' changed while it was copied: {again.reason}",
                               evidence=again.evidence)
    evidence = dict(result.evidence, snapshot=str(dest), manifest_in_commit=str(rel))
    return GateResult.ok(result.gate, result.reason, metrics=result.metrics, evidence=evidence)


@task(name="train")
def train(pol, src: Path, run_dir: Path) -> Path:
    out = run_dir / "out"
    if out.exists():
        shutil.rmtree(out)
    cmd = [*pol.training.command, "--data", str(run_dir / "data" / "train"), "--out", str(out)]
    shown = " ".join("python" if c == "{python}" else c for c in pol.training.command)
    emit("progress", step="train", message=f"training: {shown} (no secrets in its environment)")
    seconds = isolation.run(cmd, cwd=src, home=run_dir / "home-train", timeout=pol.training.timeout_seconds,
                            what="trainer", threads=pol.training.threads,
                            on_line=lambda l: emit("progress", step="train", message=f"  trainer | {l}"))
    emit("progress", step="train", message=f"training finished in {seconds:.1f} s")
    return out


@task(name="evaluation-gate")
def evaluate(pol, src: Path, out: Path, run_dir: Path) -> GateResult:
    e = pol.evaluation
    thresholds = {"min_test_accuracy": e.min_test_accuracy, "min_golden_accuracy": e.min_golden_accuracy,
                  "epsilon": e.epsilon, "min_robust_accuracy": e.min_robust_accuracy, "pgd_steps": e.pgd_steps,
                  "robust_samples": e.robust_samples, "seed": e.seed}
    result_file = run_dir / "evaluation.json"
    emit("progress", step="evaluate", message="evaluating: accuracy, golden set, ART PGD (sandboxed)")
    isolation.run(["{python}", "-P", "-m", "flows._evaluate", "--src", str(src), "--model", str(out),
                   "--test", str(run_dir / "data" / "train"), "--golden", str(run_dir / "data" / "golden"),
                   "--thresholds", json.dumps(thresholds), "--threads", str(pol.training.threads),
                   "--out", str(result_file)],
                  cwd=run_dir, home=run_dir / "home-eval", timeout=pol.training.timeout_seconds, what="evaluation",
                  threads=pol.training.threads)
    return GateResult.from_dict(json.loads(result_file.read_text()))


@task(name="sign-and-stage")
def sign_and_stage(pol, run_id, run_dir, src: Path, out, c: GateResult, datasets: dict, rec: RunRecorder,
                   ledger: Ledger):
    model_dir = run_dir / "model"
    for name in ("model.safetensors", "training.json"):
        shutil.copy2(out / name, model_dir / name)
    provenance = {
        "format": "airlock-provenance/v1",
        "run_id": run_id,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "policy": {"path": str(pol.source), "digest": pol.digest},
        "commit": {k: c.evidence.get(k) for k in ("commit", "signer", "key_fingerprint", "author", "subject", "repo")},
        "datasets": {name: {"root_digest": r.evidence["expected_root_digest"], "files": r.evidence["files"],
                            "manifest": r.evidence["manifest_in_commit"]} for name, r in datasets.items()},
        "trainer": {"command": pol.training.command, "metadata": "training.json"},
        "gates": [r.to_dict() | {"evidence": None} for r in rec.results],
    }
    (model_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    # AI bill of materials: data hashes, preprocessing, hyperparameters, commit, packages (signed with the model).
    committed = {name: manifest.load(src / r.evidence["manifest_in_commit"]) for name, r in datasets.items()}
    metrics = {k: v for r in rec.results if r.gate == "evaluation" for k, v in r.metrics.items()}
    aibom.write(model_dir, provenance, committed, metrics)
    key = pol.signing.private_key or _env_key()
    sig = run_dir / "model.sig"
    modelsign.sign(model_dir, sig, key)
    ledger.append("model.signed", {"signature": str(sig), "public_key": str(pol.trust.model_signing_public_key)}, run_id=run_id)
    registry = _registry(pol, ledger)
    staged = registry.stage(model_dir, sig, run_id)
    emit("staged", digest=staged.digest, path=str(staged.path))
    return staged


def collect_approvals(pol, run_id: str, digest: str, commit_signer: str | None, rec: RunRecorder,
                      ledger: Ledger) -> list[approval.Approval]:
    """The pause. Runs in the flow body (Prefect cannot pause inside a task)."""
    ctx = approval.Context(run_id=run_id, model_digest=digest, approvers_file=pol.trust.approvers,
                           commit_signer=commit_signer, forbid_self_approval=pol.approval.forbid_self_approval)
    command = f"airlock approve {run_id} --key ~/.ssh/id_ed25519 --config {pol.source}"
    description = (_report.summary_markdown(rec.results, f"Approve model {digest}?")
                   + f"\n\nApprove from a terminal:\n\n    {command}\n\n"
                   "Paste-in approvals must be a statement and an SSH signature made by `airlock approve --print-only`.")
    ledger.append("approval.requested", {"digest": digest, "quorum": pol.approval.quorum, "command": command}, run_id=run_id)
    emit("awaiting", run_id=run_id, digest=digest, command=command, quorum=pol.approval.quorum)
    accepted: list[approval.Verified] = []
    deadline = time.monotonic() + pol.approval.timeout_seconds
    for attempt in range(pol.approval.max_attempts):
        if len(accepted) >= pol.approval.quorum:
            break
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            break
        try:
            raw = pause_flow_run(wait_for_input=ApprovalInput.with_initial_data(description=description),
                                 timeout=remaining, poll_interval=int(max(1, pol.approval.poll_seconds)),
                                 key=f"approval-{attempt}")
            submitted = approval.Approval(str(raw.statement), str(raw.signature))
            result, verified = approval.verify_one(submitted, ctx, accepted)
        except FlowPauseTimeout:
            break
        except Exception as e:  # noqa: BLE001 - malformed input written straight to the API is a refusal
            submitted = approval.Approval(f"<invalid input: {type(e).__name__}>", "")
            result, verified = GateResult.fail(approval.GATE, f"invalid approval input: {type(e).__name__}"), None
        ledger.append("approval.received", result.to_dict(), run_id=run_id)
        _publish_approval_verdict(submitted, result)
        emit("approval", result=result)
        if verified is None:
            continue            # refused: say why, keep waiting for a valid one
        accepted.append(verified)
        if verified.decision == "reject":
            raise GateFailed(f"{verified.approver} rejected the model: {verified.reason or 'no reason given'}")
    final = approval.check_quorum([v.approval for v in accepted], ctx, pol.approval.quorum)
    if not final.passed:
        ledger.append("approval.timeout", {"accepted": [v.approver for v in accepted]}, run_id=run_id)
        raise GateFailed(f"approval gate refused: {final.reason} before the approval window closed (or "
                         f"{pol.approval.max_attempts} submissions were used up) — nothing was promoted; start a new run")
    rec.record(final)
    return [v.approval for v in accepted]


@task(name="promote")
def promote(pol, digest: str, approvals: list[approval.Approval], ledger: Ledger) -> dict:
    pointer = _registry(pol, ledger).promote(digest, approvals, pol.approval.quorum, pol.approval.forbid_self_approval)
    emit("progress", step="promote", message=f"production now {digest}")
    return pointer


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


def _registry(pol, ledger: Ledger) -> Registry:
    return Registry(pol.registry.path, ledger, pol.trust.model_signing_public_key, pol.trust.approvers)


def _env_key() -> Path:
    import os

    from airlock.modelsign import SigningError

    k = os.environ.get("AIRLOCK_SIGNING_KEY")
    if not k:
        raise SigningError("no model-signing key configured", "set signing.private_key in airlock.toml or $AIRLOCK_SIGNING_KEY")
    return Path(k)
