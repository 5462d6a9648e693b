"""The ``airlock`` command line. Names, options and exit codes are stable (other tooling drives them).

Exit codes: 0 success; 1 refused (a gate, signature, approval, or a tampered registry/ledger); 3 an internal error
(a bug of Airlock's, never your input); 2 usage or
configuration error. Every failure is one line on stderr saying what is wrong and what to do; no tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import cast

from airlock.errors import EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, AirlockError, ServeError, UsageError
from airlock.policy import Policy
from flows._console import Printer, _prefect_env

_TRUST_DIRS: list = []


def _trusted_policy(config: str):
    """Load the policy and pin its trust roots (from the protected ref or outside the repo) for this command."""
    import tempfile

    from airlock import policy, trust

    pol = policy.load(config)
    d = tempfile.TemporaryDirectory(prefix="airlock-trust-")
    _TRUST_DIRS.append(d)  # removed when the command ends
    return trust.pin(pol, trust.resolve(pol, Path(d.name)))


def _err(msg: str) -> None:
    print(f"airlock: {msg}", file=sys.stderr, flush=True)


# -- commands --------------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from airlock import policy

    pol = policy.load(args.config)  # validate before Prefect starts: a bad key fails in a second
    _prefect_env(args.verbose)
    from prefect.states import State

    from flows import _report
    from flows.retrain import retrain

    printer = Printer()
    _report.LISTENERS.append(printer)
    state = cast(State, retrain(str(pol.source), return_state=True))
    return EXIT_OK if state.is_completed() else EXIT_REFUSED


def _show_what_is_approved(reg, prov: dict) -> None:
    """From the signed provenance (and production's, verified): each gate beside production's, the commits in the
    range, the data batches new since production."""
    from airlock.errors import RegistryError

    try:
        prod, _ = reg.verify_stage("production")
        prod_prov: dict = prod.provenance
    except RegistryError:
        prod_prov = {}
    prod_gates = {g.get("gate"): g for g in prod_prov.get("gates", [])}
    print(f"  {'':8} {'gate':20} {'this model':40} {'production' if prod_prov else '(nothing in production)'}")
    for g in prov.get("gates", []):
        mine = _metrics(g)
        theirs = _metrics(prod_gates.get(g["gate"]) or {}) if prod_prov else ""
        print(f"  {g['verdict'].upper():8} {g['gate']:20} {mine:40} {theirs}")
        print(f"  {'':8} {'':20} {g['reason']}")
    commits = (prov.get("commit") or {}).get("range") or []
    if commits:
        print(f"commits in the range ({len(commits)} shown, newest first):")
        for c in commits:
            print(f"  {c.get('commit', '?')[:12]} {c.get('author_email', '?'):28} {c.get('subject', '')[:60]}")
    for name, ds in sorted((prov.get("datasets") or {}).items()):
        before = set(((prod_prov.get("datasets") or {}).get(name) or {}).get("batches") or {})
        new = {b: v for b, v in (ds.get("batches") or {}).items() if b not in before}
        if new:
            print(f"data batches of {name} new since production:")
            for bid, b in new.items():
                print(f"  {bid[:12]} v{b.get('version')} from {b.get('source')} ({b.get('who')}, {b.get('time')})")


def _metrics(g: dict) -> str:
    m = g.get("metrics") or {}
    shown = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(m.items())[:3]]
    return ", ".join(shown)[:40]


def _confirm(question: str) -> None:
    """Ask on the terminal; without one, --yes is required (an approval is never given by accident)."""
    if not sys.stdin.isatty():
        raise UsageError("no terminal to confirm on", "pass --yes to sign without a confirmation prompt")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("not confirmed: nothing was signed", "run the command again and answer y")


def cmd_approve(args) -> int:
    from airlock import sshsig
    from gates import approval
    from registry import Registry

    if args.statement_only and not args.as_:
        raise UsageError("--statement-only needs --as NAME", "pass the principal listed for you in the approvers file")
    if not args.statement_only and not args.key:
        raise UsageError("--key is required", "pass --key PATH to your SSH private key (or use --statement-only)")
    pol = _trusted_policy(args.config)
    reg = Registry.from_policy(pol)
    # Show what is being approved from the registry, verified with the trusted key: not from the unauthenticated API.
    staged = reg.staged_for_run(args.run_id)
    prov = staged.provenance
    # What is approved goes to the terminal; with --statement-only / --print-only stdout is the statement alone.
    with contextlib.redirect_stdout(sys.stderr if args.statement_only or args.print_only else sys.stdout):
        print(f"run {args.run_id}\nmodel {staged.digest} (signature verified)")
        c = prov.get("commit", {})
        print(f"commit {c.get('commit', '?')[:12]} signed by {c.get('signer')} — {c.get('subject', '')}")
        box = prov.get("sandbox") or {}
        if not box.get("isolated"):
            print(f"WARNING: {box.get('warning') or 'the provenance does not say that team code ran sandboxed'}")
        _show_what_is_approved(reg, prov)
    principal = args.as_
    if not principal:
        keytype, blob = sshsig.public_key_of(args.key)
        names = sshsig.principals_for(pol.trust.approvers, keytype, blob)
        if not names:
            raise approval.Refused(
                f"key {sshsig.fingerprint(keytype, blob)} is not listed in the approvers file",
                "ask the trust-root owners to add your key, or pass --as NAME",
            )
        principal = names[0]
    decision = "reject" if args.reject else "approve"
    statement = approval.make_statement(args.run_id, staged.digest, principal, decision, args.reason or "")
    if args.statement_only:  # signed elsewhere: ssh-keygen -Y sign -n airlock-approval, then pasted in the UI
        sys.stdout.write(statement)
        sys.stdout.flush()
        return EXIT_OK
    if not args.yes and not args.print_only:
        _confirm(f"{decision} {staged.digest} as {principal}?")
    signed = approval.sign(args.key, statement)
    if args.print_only:
        print(json.dumps(signed.to_dict()))
        return EXIT_OK

    _prefect_env(args.verbose)
    import httpx  # Prefect's HTTP client

    try:
        return _submit_approval(args, signed, statement, principal, decision)
    except (httpx.HTTPError, OSError) as e:
        from prefect.settings import PREFECT_API_URL

        where = PREFECT_API_URL.value() or "the embedded server of PREFECT_HOME"
        raise approval.Refused(
            f"cannot reach the Prefect API at {where}: {type(e).__name__}",
            "set PREFECT_API_URL (or PREFECT_HOME) to where the run is paused",
        ) from None


# Another submission is being judged (the run is RUNNING between two pauses; in suspend mode, SCHEDULED until a
# worker starts it again): wait this long for the next pause.
BUSY_WAIT_SECONDS = 180.0
MAX_RESUBMITS = 20


def _wait_until_paused(client, run_id: str, deadline: float):
    """The run's state once it is paused again, or None once it has ended (or the deadline passed)."""
    while time.monotonic() < deadline:
        fr = client.read_flow_run(run_id)
        if fr.state is not None and fr.state.is_paused():
            return fr.state
        if fr.state is not None and fr.state.is_final():
            return None
        time.sleep(0.2)
    return None


def _submit_approval(args, signed, statement: str, principal: str, decision: str) -> int:
    """Submit, and end in exactly one of: counted, refused with the reason, or busy - resubmitted at the next pause.

    Prefect answers a resume that lost a race (two approvers within milliseconds: the run is no longer paused) with
    ABORT and stores nothing; ``resume_flow_run`` raises nothing then. The orchestration result is checked here, and
    the approval is resubmitted when the run pauses again for the next approval."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound

    from flows.retrain import verdict_key
    from gates import approval

    with get_client(sync_client=True) as client:
        try:
            fr = client.read_flow_run(args.run_id)
        except (ObjectNotFound, ValueError):
            raise approval.Refused(
                f"no flow run {args.run_id} on this Prefect API", "check the run id and PREFECT_API_URL / PREFECT_HOME"
            ) from None
        if fr.state is not None and not fr.state.is_paused() and not fr.state.is_final():
            # Judging someone else's approval right now (or, in suspend mode, waiting for a worker to start it again)
            _wait_until_paused(client, args.run_id, time.monotonic() + BUSY_WAIT_SECONDS)
            fr = client.read_flow_run(args.run_id)
        if not (fr.state and fr.state.is_paused()):
            raise approval.Refused(
                f"run {args.run_id} is not waiting for approval (state {fr.state and fr.state.name})",
                "approve only runs that 'airlock run' left paused",
            )
        print(f"submitting {decision} as {principal} ...", flush=True)
        for _ in range(MAX_RESUBMITS):
            response = client.resume_flow_run(args.run_id, run_input=signed.to_dict())
            if response.status == SetStateStatus.ACCEPT:
                break
            reason = " ".join(str(getattr(response.details, "reason", "") or "").split())[:200]
            now = client.read_flow_run(args.run_id)
            if now.state is not None and now.state.is_final():
                raise approval.Refused(
                    f"the run ended before it took the approval (state {now.state.name})", "check the run in Prefect"
                )
            if now.state is not None and now.state.is_paused() and response.status == SetStateStatus.REJECT:
                # Still paused and refused: the input itself (schema), not a race.
                raise approval.Refused(f"the run did not accept the input: {reason}", "check the approval's fields")
            print("busy: another approval is being judged; resubmitting at the next pause ...", flush=True)
            if _wait_until_paused(client, args.run_id, time.monotonic() + BUSY_WAIT_SECONDS) is None:
                raise approval.Refused(
                    "the run did not pause again for approval after another submission", "check the run in Prefect"
                )
        else:
            raise approval.Refused(
                f"the run stayed busy through {MAX_RESUBMITS} submissions", "submit again in a moment"
            )
        key = verdict_key(statement)
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            if arts:
                verdict = json.loads(arts[0].description or "{}")
                if verdict.get("accepted"):
                    print(f"accepted: {verdict.get('reason')}")
                    return EXIT_OK
                _err(f"approval refused by the flow: {verdict.get('reason')}")
                return EXIT_REFUSED
            time.sleep(0.1)
    _err(
        f"no verdict from run {args.run_id} within {args.wait} s — check the run in Prefect; the flow may not be running"
    )
    return EXIT_REFUSED


def cmd_bom(args) -> int:
    from flows._rebuild import bom

    print(bom(_trusted_policy(args.config), args.model))
    return EXIT_OK


def cmd_rebuild(args) -> int:
    from flows._rebuild import rebuild

    same, signed, rebuilt = rebuild(_trusted_policy(args.config), args.run_id)
    if same:
        print(f"identical: the rebuilt weights are the signed ones (sha256:{signed})")
        return EXIT_OK
    _err(f"different: signed sha256:{signed[:16]}…, rebuilt sha256:{rebuilt[:16]}… — the trainer is not reproducible")
    return EXIT_REFUSED


def cmd_init(args) -> int:
    from flows._init import init

    return init(args)


def cmd_verify(args) -> int:
    """Everything verified loading checks (registry/loading.py); with --export, the verified bytes written out."""
    from registry.loading import load

    model = load(args.stage, config=args.config, registry=args.registry)
    approved = f", approved by {', '.join(model.approvers)}, ledger anchor present" if model.approvers else ""
    print(
        f"{args.stage} model {model.digest} verified: signature by the trusted key, digest over every file"
        f"{approved}, gate evidence and AIBOM consistent"
    )
    if args.stage == "production":
        from registry import Registry

        pol = _trusted_policy(args.config)
        interrupted = Registry.from_policy(pol, root=args.registry).interrupted_promotion()
        if interrupted is not None:
            print(
                f"warning: the promotion of {interrupted['digest'][:23]}… was interrupted after production switched "
                "and before the ledger recorded it (a crash): run `airlock registry repair` to record it",
                file=sys.stderr,
            )
    if args.export:
        dest = model.export(args.export)
        print(f"exported the verified files to {dest} (read-only)")
    return EXIT_OK


def cmd_models(args) -> int:
    """Every model any data touched: from the signed provenance of each model in any stage, and each model production
    ever held; exit 1 if any model could not be checked (it might be one)."""
    from registry import Registry
    from registry.affected import affected_by

    pol = _trusted_policy(args.config)
    hits = affected_by(Registry.from_policy(pol), args.affected_by)
    problems = [h for h in hits if h.problem]
    if args.json:
        print(json.dumps({"affected_by": args.affected_by, "models": [h.to_dict() for h in hits]}, indent=2))
    elif not hits:
        print(f"no model in {pol.registry.path} was trained on {args.affected_by}")
    else:
        for h in hits:
            print(f"{h.digest}  run {h.run_id or '?'}  {', '.join(h.stages)}")
            if h.problem:
                print(f"    CANNOT CHECK: {h.problem}")
            for m in h.matched:
                print(f"    data      {m}")
            if h.promoted:
                print(f"    promoted {', '.join(h.promoted)} approved by {', '.join(h.approvers) or '?'}")
    if problems:
        _err(
            f"{len(problems)} model(s) could not be checked and may be affected — see CANNOT CHECK above "
            "(airlock verify, airlock registry repair)"
        )
        return 1
    return EXIT_OK


def cmd_registry_log(args) -> int:
    """The registry's access log: who read, wrote, promoted or was refused what, when, from where."""
    from airlock import policy
    from registry.access import AccessLog

    pol = policy.load(args.config)
    rows = AccessLog(pol.registry.path).entries()
    rows = [e for e in rows if not args.digest or (e.get("data") or {}).get("digest", "").startswith(args.digest)]
    if args.json:
        print(json.dumps({"access": rows}, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no access recorded in {pol.registry.path}", file=sys.stderr)
    for e in rows:
        d = e.get("data") or {}
        by = d.get("by") or {}
        what = d.get("digest") or d.get("run_id") or ""
        op = d.get("op", "?") + (f" {d['action']}" if d.get("action") else "")
        extra = f"  — {d['reason']}" if d.get("reason") else ""
        print(
            f"{e.get('time', '')[:19]}  {op:<16} {d.get('stage') or '':<10} {str(what)[:23]:<23}  "
            f"{by.get('user')}@{by.get('host')} ({by.get('command', '?')}){extra}"
        )
    return EXIT_OK


def cmd_registry_repair(args) -> int:
    """Finish what a crash left in the registry: stale temporaries, an unrecorded promotion (both recorded)."""
    from registry import Registry

    pol = _trusted_policy(args.config)
    done = Registry.from_policy(pol).repair()
    for line in done:
        print(line)
    if not done:
        print("nothing to repair: no interrupted promotion (stale temporaries, if any, were removed and recorded)")
    return EXIT_OK


def cmd_mlflow_sync(args) -> int:
    """Mirror the registry's verified models into MLflow and point its production alias at production's; with
    --check, write nothing and exit 1 if MLflow differs (a model missing, the alias moved outside Airlock)."""
    from airlock import policy
    from airlock.ledger import Ledger
    from registry import Registry
    from registry.mlflow_mirror import Mirror, sync

    if policy.load(args.config).mlflow is None:
        raise UsageError("no [mlflow] section in the policy", "add [mlflow] tracking_uri = ... (docs/policy.md)")
    pol = _trusted_policy(args.config)
    mirror = Mirror.from_policy(pol)
    assert mirror is not None and pol.mlflow is not None
    ledger = Ledger.from_policy(pol)
    report = sync(mirror, Registry.from_policy(pol, ledger), ledger, check=args.check)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        for d in report.mirrored:
            print(f"mirrored {d}")
        if report.moved_outside and not args.check:
            print(
                f"the {pol.mlflow.model_name} production alias had been moved outside Airlock "
                f"(to version {report.moved_outside['was']}): moved back to version {report.alias}"
            )
        print(
            f"MLflow {pol.mlflow.tracking_uri}: {pol.mlflow.model_name}@production = version {report.alias or '(none)'}"
        )
    for line in report.problems:
        _err(line)
    return EXIT_REFUSED if report.problems else EXIT_OK


def cmd_serve(args) -> int:
    """Serve the production model behind the guard (serve/): verified first, so a model that does not verify is a
    one-line refusal before anything listens."""
    import os

    import uvicorn

    from airlock import policy
    from serve import app as serve_app
    from serve.model import ServedModel, prepare

    pol = policy.load(args.config)
    if args.prepare:  # the init container's step (templates/k8s/serving.yaml): verify, write what the server needs
        dest = prepare(pol, Path(args.prepare))
        print(f"prepared the verified production model in {dest}")
        return EXIT_OK
    if pol.serve is None:
        raise UsageError("no [serve] section in the policy", "add [serve] api_keys = ... (docs/serving.md)")
    host, port = args.host or pol.serve.host, args.port or pol.serve.port
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # before the model's start-up
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ServeError(
                f"cannot listen on {host}:{port}: {e.strerror}", "choose another --port (or serve.port)"
            ) from None
    if args.workers > 1 and pol.serve.store == "memory":
        raise UsageError(
            "several workers need a shared store: serve.store is memory",
            'set serve.store = "redis://HOST:PORT" (each worker would otherwise keep its own budgets)',
        )
    # Verifies (signature, approvals, anchor, evidence, AIBOM) - or reads what the init container verified - and
    # starts the model's sandbox.
    model = ServedModel(pol, prepared=Path(args.from_dir) if args.from_dir else None)
    if args.workers == 1:
        app = serve_app.build(pol, model)
        print(f"serving {model.digest} on http://{host}:{port} (guarded: POST /v1/predict)", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return EXIT_OK
    print(f"verified {model.digest}; serving on http://{host}:{port} with {args.workers} workers", flush=True)
    model.close()
    os.environ[serve_app.CONFIG_ENV] = str(pol.source)
    if args.from_dir:
        os.environ[serve_app.PREPARED_ENV] = str(Path(args.from_dir).resolve())
    uvicorn.run(
        "serve.app:factory", factory=True, host=host, port=port, workers=args.workers, log_level="warning",
        access_log=False,
    )  # fmt: skip
    return EXIT_OK


def cmd_watch(args) -> int:
    """Production re-verified (signature, approvals now, ledger anchor and checkpoints) and re-evaluated on the golden
    set as it is now; any failure is an alert (Falco format) and exit 1. The scheduled deployment runs the same."""
    from airlock import policy
    from serve.watch import check

    report = check(policy.load(args.config))
    if args.json:
        print(json.dumps(report.__dict__ | {"ok": report.ok}, indent=2))
    else:
        for c in report.checks:
            print(f"{'ok    ' if c['ok'] else 'FAILED'}  {c['check']:<8} {c['detail']}")
    if not report.ok:
        _err("production watch failed: " + "; ".join(c["check"] for c in report.checks if not c["ok"]))
        return EXIT_REFUSED
    return EXIT_OK


def cmd_api_key(args) -> int:
    """A new API key for a client of the inference app: printed once; only its sha256 is kept."""
    from airlock import policy
    from serve.keys import add_client

    pol = policy.load(args.config)
    if pol.serve is None:
        raise UsageError("no [serve] section in the policy", "add [serve] api_keys = ... (docs/serving.md)")
    key = add_client(pol.serve.api_keys, args.client, scores=args.scores)
    print(key)
    print(
        f"airlock: key for {args.client} added to {pol.serve.api_keys} (shown once; only its sha256 is stored)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_registry_keygen(args) -> int:
    """A new registry encryption key (registry.encryption_key): 32 random bytes, base64, mode 0600."""
    from registry import atrest

    path = Path(args.path)
    try:
        atrest.generate_key(path)
    except FileExistsError:
        _err(f"{path} already exists: a registry key is never overwritten (the models sealed with it would be lost)")
        return EXIT_REFUSED
    except OSError as e:
        _err(f"cannot write {path}: {e.strerror}")
        return EXIT_REFUSED
    print(f'wrote {path}: set registry.encryption_key = "{path}" (keep it off the training repository)')
    return EXIT_OK


def cmd_pending(args) -> int:
    """Runs waiting for approval: who approved, what the policy still needs, age and time left."""
    import datetime as dt

    from airlock.approvals import Policy as ApprovalPolicy
    from airlock.ledger import Ledger
    from flows import _pending

    pol = _trusted_policy(args.config)
    policy = ApprovalPolicy.from_policy(pol.approval)
    now = dt.datetime.now(dt.UTC)
    rows = [
        p.to_dict(policy, now) for p in _pending.pending(Ledger.from_policy(pol), pol.approval.timeout_seconds, now)
    ]
    if args.json:
        print(json.dumps({"pending": rows, "policy": policy.to_dict()}, indent=2))
    elif rows:
        print(_pending.table(rows))
    else:
        print("no run is waiting for approval", file=sys.stderr)
    return EXIT_OK


def cmd_ledger_verify(args) -> int:
    from airlock import checkpoints
    from airlock.ledger import Ledger

    cp_repo = Path(args.checkpoints) if args.checkpoints else None
    if args.path:
        ledger = Ledger(args.path, public_key=args.public_key)
    else:
        from airlock import policy

        pol = policy.load(args.config)
        ledger = Ledger(pol.ledger.path, public_key=args.public_key or pol.ledger.public_key)
        cp_repo = cp_repo or pol.ledger.checkpoints
    count, head = ledger.verify()
    if cp_repo is not None:
        if not ledger.signed:
            _err("checkpoints are only believed with the ledger key's public half: pass --public-key")
            return 2
        n = checkpoints.check(ledger, cp_repo)
        print(f"ledger {ledger.path}: holds all {n} checkpoint(s) published in {cp_repo}")
    torn = ledger.torn_bytes()
    if torn:
        print(
            f"warning: the last line ({torn} bytes) is incomplete (a crash or a full disk while it was written): "
            "it is not part of the log, and the next append moves it aside and records that",
            file=sys.stderr,
        )
    if ledger.signed:
        print(
            f"ledger {ledger.path}: {count} entries, chain intact, every entry signed by the ledger key, head {head[:16]}…"
        )
    else:
        print(f"ledger {ledger.path}: {count} entries, chain intact, head {head[:16]}…")
        print(
            "warning: the ledger is not signed: a process that can write it can append a correctly chained entry "
            "(set ledger.public_key and ledger.key, docs/policy.md)",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_ledger_checkpoint(args) -> int:
    """Publish a signed checkpoint of the ledger's head to ledger.checkpoints (the flow does after every run)."""
    from airlock import checkpoints, policy
    from airlock.ledger import Ledger

    pol = policy.load(args.config)
    if pol.ledger.checkpoints is None:
        _err(f"no ledger.checkpoints in {pol.source} — set it to a git repository (docs/policy.md)")
        return 2
    cp = checkpoints.publish(Ledger.from_policy(pol), pol.ledger.checkpoints)
    print(f"checkpoint seq {cp['seq']} ({cp['entries']} entries, head {cp['hash'][:16]}…) in {pol.ledger.checkpoints}")
    return EXIT_OK


def cmd_data_manifest(args) -> int:
    from airlock import manifest

    m = manifest.build(args.dir, args.dataset)
    manifest.write(args.out, m)
    print(f"wrote {args.out}: {len(m['files'])} files, {m['root_digest']}")
    return EXIT_OK


def _dataset_policy(pol: Policy, name: str):
    from airlock.errors import PolicyError

    names = list(type(pol.data).model_fields)
    if name not in names:
        raise PolicyError(f"no dataset {name!r} in {pol.source}", f"use one of: {', '.join(names)}")
    return getattr(pol.data, name)


def cmd_data_ingest(args) -> int:
    from airlock import ingest, policy
    from airlock.ledger import Ledger

    pol = policy.load(args.config)
    ds = _dataset_policy(pol, args.dataset)
    r = ingest.ingest(
        args.dataset,
        args.src,
        data_dir=ds.dir,
        manifest_path=ds.manifest,
        ledger=Ledger.from_policy(pol),
        source=args.source,
        note=args.note or "",
        repo=pol.repo.path,
    )
    replaced = (
        f", replaced: {', '.join(r.replaced[:10])}"
        + (f" (+{len(r.replaced) - 10} more)" if len(r.replaced) > 10 else "")
        if r.replaced
        else ""
    )
    print(
        f"ingested batch {r.batch} into dataset '{r.dataset}': {len(r.files)} file{'s' * (len(r.files) != 1)}{replaced}"
    )
    print(f"version {r.version}  {r.root_digest}  parent {r.parent or '-'}")
    print(f"wrote {r.manifest} and {r.history}; ledger entry seq {r.ledger_seq}")
    print("commit both with the code (signed): the data gate reads them from the verified commit")
    if ds.pinned_root_digest and ds.pinned_root_digest != r.root_digest:
        print(
            f"note: data.{args.dataset}.pinned_root_digest in {pol.source} is {ds.pinned_root_digest}: the data gate "
            f"refuses this version until the trust-root owners pin {r.root_digest}"
        )
    return EXIT_OK


def cmd_data_log(args) -> int:
    from airlock import ingest, policy
    from airlock.ledger import Ledger

    pol = policy.load(args.config)
    ds = _dataset_policy(pol, args.dataset)
    versions = ingest.lineage(args.dataset, ds.manifest, Ledger.from_policy(pol))
    cur = versions[-1]
    print(
        f"dataset {args.dataset}: {len(versions)} version{'s' * (len(versions) != 1)}, current v{cur.version} "
        f"{cur.root_digest} ({ds.manifest})"
    )
    for v in versions:
        print(f"v{v.version}  {v.root_digest}  {v.files} files  parent {v.parent or '-'}")
        if v.batch is None:
            print("    no batch record (manifest written by 'airlock data manifest', not ingested)")
            continue
        b = v.batch
        n = len(b["files"])
        replaced = f", replaced {', '.join(sorted(b.get('replaced') or {}))}" if b.get("replaced") else ""
        ledger = f"ledger seq {v.ledger_seq}" if v.ledger_seq is not None else "NOT IN LEDGER"
        print(f"    batch {v.batch_id}: {n} file{'s' * (n != 1)}{replaced}, digest {b.get('root_digest')}")
        print(f"    source {b['source']} — by {b.get('who')} at {b.get('time')} — {ledger}")
        if b.get("note"):
            print(f"    note: {b['note']}")
    unlogged = [v for v in versions if v.batch is not None and v.ledger_seq is None]
    if unlogged:
        raise ingest.LineageError(
            f"version{'s' * (len(unlogged) > 1)} {', '.join(f'v{v.version}' for v in unlogged)} of '{args.dataset}' "
            f"{'have' if len(unlogged) > 1 else 'has'} no matching data.ingest entry in {pol.ledger.path}",
            "treat those versions as not ingested through Airlock: investigate before training on them",
        )
    return EXIT_OK


def cmd_data_trace(args) -> int:
    from airlock import ingest
    from registry import Registry

    pol = _trusted_policy(args.config)
    reg = Registry.from_policy(pol)
    # The provenance is read from the signed model, after the registry verified signature, digest (and approvals).
    model, _ = reg.verify_stage(args.stage)
    prov = model.provenance
    rows = ingest.trace_rows(prov)
    if args.json:
        print(
            json.dumps(
                {
                    "stage": args.stage,
                    "model_digest": model.digest,
                    "run_id": prov.get("run_id"),
                    "commit": (prov.get("commit") or {}).get("commit"),
                    "files": rows,
                },
                indent=2,
            )
        )
        return EXIT_OK
    c = prov.get("commit") or {}
    print(
        f"{args.stage} model {model.digest} (signature verified) — run {prov.get('run_id')}, "
        f"commit {str(c.get('commit'))[:12]} signed by {c.get('signer')}"
    )
    for name, ds in sorted((prov.get("datasets") or {}).items()):
        print(
            f"dataset {name} v{ds.get('version')} {ds.get('root_digest')} ({ds.get('manifest')}): "
            f"{ds.get('file_count', len(ds.get('files') or {}))} files"
        )
    table = [("DATASET", "FILE", "SHA256", "BATCH", "SOURCE")] + [
        (r["dataset"], r["path"], r["sha256"], r["batch"] or "-", r["source"] or "unrecorded (no ingest record)")
        for r in rows
    ]
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t[:4], widths)) + "  " + t[4])
    return EXIT_OK


def cmd_audit(args) -> int:
    from audit import k8s

    return k8s.run_cli(args.paths)


def cmd_demo(args) -> int:
    from flows import demo

    code = demo.main(args)
    # The demo has drained Prefect's logs and events and stopped its server: all the interpreter's shutdown would
    # still do is seconds of tearing down torch, ART and Prefect. Only the demo ends this way: `airlock run` leaves
    # Prefect's exit handlers their work.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- parser ----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        _err(
            f"{message} — see 'airlock {self.prog.split(' ', 1)[-1] if ' ' in self.prog else ''} --help'".replace(
                "  ", " "
            )
        )
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="airlock", description="Gated, signed, dual-approved retraining.")
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own logs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="self-contained end-to-end run: signed repo, keys, data, two approvers")
    d.add_argument("--workdir", type=Path, help="directory to create the demo in (default: a new temporary one)")
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    d.add_argument(
        "--registry",
        metavar="URL",
        help="an OCI registry as the model store: oci://HOST:PORT/PREFIX (oci+http:// for plain HTTP)",
    )
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("init", help="write a policy, trust files and a signing key for your fork, outside it")
    i.add_argument("dir", type=Path, help="a new directory (outside the training repository)")
    i.add_argument("--repo", required=True, help="the training repository (your fork)")
    i.add_argument("--train-data", required=True, help="the training dataset's directory")
    i.add_argument("--golden-data", required=True, help="the golden set's directory")
    i.add_argument(
        "--signer",
        action="append",
        default=[],
        required=True,
        metavar="EMAIL=KEY.pub",
        help="who may sign training commits (repeat)",
    )
    i.add_argument(
        "--approver",
        action="append",
        default=[],
        required=True,
        metavar="EMAIL=KEY.pub:ROLES",
        help="who may approve, with roles (ml-lead, security; repeat)",
    )
    i.set_defaults(func=cmd_init)

    b = sub.add_parser("bom", help="print a verified model's AI bill of materials")
    b.add_argument("model", help="production, staging, a model digest (sha256:...) or a run id")
    b.add_argument("--config", default="airlock.toml")
    b.set_defaults(func=cmd_bom)

    rb = sub.add_parser("rebuild", help="train again from a model's recorded commit and data; compare the weights")
    rb.add_argument("run_id")
    rb.add_argument("--config", default="airlock.toml")
    rb.set_defaults(func=cmd_rebuild)

    r = sub.add_parser("run", help="run the gated pipeline on the repository named by the policy")
    r.add_argument("--config", default="airlock.toml")
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("approve", help="sign and submit an approval (or rejection) for a paused run")
    a.add_argument("run_id")
    a.add_argument("--key", help="your SSH private key (as for ssh-keygen -Y sign); not needed with --statement-only")
    a.add_argument("--reject", action="store_true", help="reject instead of approve (ends the run)")
    a.add_argument("--reason", default="", help="free text recorded with the decision")
    a.add_argument("--config", default="airlock.toml")
    a.add_argument("--as", dest="as_", metavar="PRINCIPAL", help="approver name (default: looked up from your key)")
    a.add_argument(
        "--print-only", action="store_true", help="print the signed approval as JSON (to paste into the Prefect UI)"
    )
    a.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the flow's verdict")
    a.add_argument("-y", "--yes", action="store_true", help="sign without asking for confirmation")
    a.add_argument(
        "--statement-only",
        action="store_true",
        help="print the statement to sign (no newline) for ssh-keygen -Y sign -n airlock-approval; needs --as",
    )
    a.set_defaults(func=cmd_approve)

    pe = sub.add_parser("pending", help="runs waiting for approval: who approved, what is still needed, time left")
    pe.add_argument("--config", default="airlock.toml")
    pe.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pe.set_defaults(func=cmd_pending)

    v = sub.add_parser("verify", help="verify a stage's model, signature and approvals (exit 0 only if all verify)")
    v.add_argument("--stage", choices=["production", "staging"], default="production")
    v.add_argument("--registry", help="registry directory (default: registry.path from the policy)")
    v.add_argument("--config", default="airlock.toml")
    v.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="then write the verified files to DIR, a new directory (an init container's volume for the server)",
    )
    v.set_defaults(func=cmd_verify)

    mo = sub.add_parser("models", help="which models were trained on a file, batch or dataset version")
    mo.add_argument(
        "--affected-by",
        required=True,
        metavar="X",
        help="a file's sha256, a dataset's or batch's root digest, or a batch id (b0007, train/b0007)",
    )
    mo.add_argument("--config", default="airlock.toml")
    mo.add_argument("--json", action="store_true", help="one JSON object on stdout")
    mo.set_defaults(func=cmd_models)

    rg = sub.add_parser("registry", help="the model registry's own housekeeping")
    rsub = rg.add_subparsers(dest="registry_command", required=True, parser_class=_Parser)
    rl = rsub.add_parser("log", help="who read, wrote, promoted or was refused what, when, from which host")
    rl.add_argument("--digest", help="only accesses of this model (a digest prefix)")
    rl.add_argument("--json", action="store_true", help="one JSON object on stdout")
    rl.add_argument("--config", default="airlock.toml")
    rl.set_defaults(func=cmd_registry_log)
    rr = rsub.add_parser("repair", help="finish what a crash left: stale temporaries, an unrecorded promotion")
    rr.add_argument("--config", default="airlock.toml")
    rr.set_defaults(func=cmd_registry_repair)
    rk = rsub.add_parser("keygen", help="a new key for encryption at rest of the stored models")
    rk.add_argument("path", help="where to write it (must not exist)")
    rk.set_defaults(func=cmd_registry_keygen)

    ml = sub.add_parser("mlflow", help="the MLflow mirror of the registry (a view; never an authority)")
    msub = ml.add_subparsers(dest="mlflow_command", required=True, parser_class=_Parser)
    ms = msub.add_parser("sync", help="mirror verified models, point the production alias at production's")
    ms.add_argument("--check", action="store_true", help="write nothing; exit 1 if MLflow differs from the registry")
    ms.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ms.add_argument("--config", default="airlock.toml")
    ms.set_defaults(func=cmd_mlflow_sync)

    sv = sub.add_parser("serve", help="serve the production model behind the runtime guard (docs/serving.md)")
    sv.add_argument("--config", default="airlock.toml")
    sv.add_argument("--host", help="default: serve.host")
    sv.add_argument("--port", type=int, help="default: serve.port")
    sv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (needs a redis:// store)")
    sv.add_argument("--prepare", metavar="DIR", help="verify production and write what the server needs into DIR, "
                    "then exit (a Kubernetes init container)")  # fmt: skip
    sv.add_argument("--from", dest="from_dir", metavar="DIR", help="serve what --prepare wrote (no registry needed)")
    sv.set_defaults(func=cmd_serve)
    wa = sub.add_parser("watch", help="re-verify production and re-evaluate it on the golden set (exit 1: alert)")
    wa.add_argument("--config", default="airlock.toml")
    wa.add_argument("--json", action="store_true", help="one JSON object on stdout")
    wa.set_defaults(func=cmd_watch)
    ak = sub.add_parser("api-key", help="a new API key for a client of the inference app")
    ak.add_argument("client", help="the client's name (shown in alerts; never in metrics)")
    ak.add_argument("--scores", action="store_true", help="entitled to rounded class scores, not only labels")
    ak.add_argument("--config", default="airlock.toml")
    ak.set_defaults(func=cmd_api_key)

    lg = sub.add_parser("ledger", help="the tamper-evident log")
    lsub = lg.add_subparsers(dest="ledger_command", required=True, parser_class=_Parser)
    lv = lsub.add_parser("verify", help="detect an edited, removed or reordered entry")
    lv.add_argument("--path", help="ledger file (default: ledger.path from --config)")
    lv.add_argument("--public-key", help="the ledger's Ed25519 public key (default: ledger.public_key from --config)")
    lv.add_argument("--checkpoints", help="a git repository of published checkpoints (default: ledger.checkpoints)")
    lv.add_argument("--config", default="airlock.toml")
    lv.set_defaults(func=cmd_ledger_verify)
    lc = lsub.add_parser("checkpoint", help="publish a signed checkpoint of the ledger's head to ledger.checkpoints")
    lc.add_argument("--config", default="airlock.toml")
    lc.set_defaults(func=cmd_ledger_checkpoint)

    da = sub.add_parser("data", help="dataset manifests, ingestion, lineage, tracing")
    dsub = da.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dm = dsub.add_parser("manifest", help="write the manifest of a dataset directory (commit it with the code)")
    dm.add_argument("dir", type=Path)
    dm.add_argument("--dataset", required=True)
    dm.add_argument("--out", type=Path, required=True)
    dm.set_defaults(func=cmd_data_manifest)
    di = dsub.add_parser("ingest", help="add a batch to a dataset: copy, hash, new manifest version, ledger entry")
    di.add_argument("src", type=Path, help="directory (or file) holding the new batch")
    di.add_argument("--dataset", required=True, help="dataset name in the policy (train, golden)")
    di.add_argument("--source", required=True, help="where the batch came from (URI, ticket, supplier)")
    di.add_argument("--note", default="", help="free text: what the batch is, transformations applied upstream")
    di.add_argument("--config", default="airlock.toml")
    di.set_defaults(func=cmd_data_ingest)
    dl = dsub.add_parser("log", help="lineage of a dataset: every version and batch, its source and digest")
    dl.add_argument("dataset")
    dl.add_argument("--config", default="airlock.toml")
    dl.set_defaults(func=cmd_data_log)
    dt = dsub.add_parser("trace", help="every file that went into a registered model, with its batch and source")
    dt.add_argument("--stage", choices=["production", "staging"], default="production")
    dt.add_argument("--config", default="airlock.toml")
    dt.add_argument("--json", action="store_true", help="one JSON object on stdout")
    dt.set_defaults(func=cmd_data_trace)

    au = sub.add_parser("audit", help="check Kubernetes manifests against the secure baseline")
    au.add_argument("paths", nargs="+")
    au.set_defaults(func=cmd_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AirlockError as e:
        _err(e.one_line())
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted — nothing was promoted by this command")
        return 130
    except Exception as e:  # noqa: BLE001 - an unexpected failure still fails closed, in one line
        if args.verbose:
            raise
        detail = " ".join(str(e).split())[:300]
        _err(
            f"internal error {type(e).__name__}: {detail} — a bug in Airlock, not in your input; nothing was "
            "promoted; run with -v for the traceback and report it"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
