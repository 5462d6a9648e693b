"""The deployment audit: Kubernetes manifests (or ``kubectl get ... -o yaml`` output) against Airlock's secure baseline.

``airlock audit PATH...`` calls :func:`run_cli`; the weekly ``audit.yml`` workflow runs the same code. The baseline is
the three controls the seed asks of training environments (network segmentation, least-privilege RBAC, runtime
hardening), and every check below names the attack or misconfiguration it exists for.

What is read: every YAML/JSON document of every file given (a directory is searched for ``*.yaml``, ``*.yml`` and
``*.json``; ``-`` reads standard input), multi-document files, and ``kind: List`` / ``*List`` wrappers as printed by
``kubectl get -o yaml``. Objects in the control-plane namespaces (``kube-system``, ``kube-public``,
``kube-node-lease``) belong to the platform and are not judged, except that nothing may be bound to ``cluster-admin``
from outside them.

Fail closed: a file that cannot be read or parsed, or input without a single Kubernetes object, is an error (exit 2),
never a clean audit. Reachability between namespaces is judged conservatively: a pod selector is assumed to match
some pod, and an ``ipBlock`` that overlaps a private range is assumed to reach pods.

Plain Python, no Prefect import."""

from __future__ import annotations

import sys

from airlock.errors import AuditInputError
from audit.k8s._model import GATE, SYSTEM_NAMESPACES, Obj, Report
from audit.k8s.exposure import check_notebook_exposure
from audit.k8s.load import load_objects
from audit.k8s.network import check_network
from audit.k8s.pods import check_pod, is_notebook_pod, pod_template
from audit.k8s.rbac import check_rbac
from gates._result import GateResult


def audit_objects(objs: list[Obj]) -> list[dict]:
    rep = Report()
    scoped = [o for o in objs if o.namespace not in SYSTEM_NAMESPACES]

    sa_automount = {
        (o.namespace or "default", o.name): o.doc.get("automountServiceAccountToken")
        for o in objs
        if o.kind == "ServiceAccount"
    }
    notebook_pods: list[tuple[Obj, dict]] = []
    for o in scoped:
        # A service account that automounts its token hands an API credential to every pod that names it.
        if o.kind == "ServiceAccount" and o.doc.get("automountServiceAccountToken") is not False:
            rep.add(o, None, None, "automounts its token into pods: set automountServiceAccountToken: false")
        pt = pod_template(o)
        if pt is None:
            continue
        labels, spec = pt
        check_pod(o, spec, sa_automount, rep)
        if is_notebook_pod(o, labels, spec):
            notebook_pods.append((o, labels))

    check_notebook_exposure(scoped, notebook_pods, rep)
    check_rbac(objs, rep)
    check_network(objs, rep)
    return rep.findings


def audit_paths(paths: list[str]) -> GateResult:
    """Audit manifest files / `kubectl get -o yaml` output. Unreadable input fails the gate (fail closed)."""
    try:
        objs = load_objects(list(paths))
    except AuditInputError as e:
        return GateResult.fail(GATE, f"{e}", evidence={"findings": [], "error": str(e), "paths": list(paths)})
    findings = audit_objects(objs)
    evidence = {"findings": findings, "paths": list(paths), "objects": len(objs)}
    metrics = {"objects": float(len(objs)), "findings": float(len(findings))}
    if findings:
        first = findings[0]
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        return GateResult.fail(
            GATE,
            f"{first['file']}: {first['kind']}/{first['name']}: {first['finding']}{more}; "
            "fix the manifests to the baseline in templates/k8s",
            metrics=metrics,
            evidence=evidence,
        )
    return GateResult.ok(
        GATE, f"{len(objs)} Kubernetes objects meet the secure baseline", metrics=metrics, evidence=evidence
    )


def format_finding(f: dict) -> str:
    return f"{f['file']}: {f['kind']}/{f['name']}: {f['finding']}"


def run_cli(paths: list[str]) -> int:
    """`airlock audit PATH...`: one finding a line on stdout; 0 clean, 1 findings, 2 input that cannot be audited."""
    try:
        objs = load_objects(list(paths))
    except AuditInputError as e:
        print(f"airlock audit: {e}", file=sys.stderr)
        return 2
    findings = audit_objects(objs)
    for f in findings:
        print(format_finding(f))
    if findings:
        print(
            f"airlock audit: {len(findings)} finding(s) in {len(objs)} objects; "
            "compare with templates/k8s and fix each line above",
            file=sys.stderr,
        )
        return 1
    print(f"airlock audit: {len(objs)} objects, no findings", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python3 -m audit.k8s PATH... (files, directories, or - for stdin)")
        return 0
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["audit_paths", "run_cli", "audit_objects", "load_objects", "AuditInputError", "format_finding"]
