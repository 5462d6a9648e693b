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

Plain Python, no Prefect import.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airlock.errors import AuditInputError
from gates._result import GateResult

GATE = "deploy-audit"

# The platform's own namespaces: a default-deny policy there breaks the cluster, and their pods are the platform's.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

# Label a forking team sets on its namespaces (templates/k8s/namespaces.yaml); names are the fallback.
TIER_LABEL = "airlock.dev/tier"
_TRAINING_NAME = re.compile(r"train", re.I)
_SERVING_NAME = re.compile(r"serv|infer|predict|prod", re.I)

# Where pod IPs can live. An ipBlock overlapping one of these may reach pods of another namespace.
_POD_NETWORKS = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]

_MAX_BYTES = 256 * 1024 * 1024
_SUFFIXES = (".yaml", ".yml", ".json")

# kind -> path from the object to its pod template's {"metadata", "spec"}.
_POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
    "Notebook": ("spec", "template"),  # Kubeflow's notebook custom resource
}

_CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "Node",
        "PersistentVolume",
        "StorageClass",
        "CustomResourceDefinition",
        "PriorityClass",
        "IngressClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
        "RuntimeClass",
        "GatewayClass",
    }
)

# Built-in ClusterRoles whose rules are not in a manifest dump of the repository: what they grant is known.
_BUILTIN_GRANTS = {
    "admin": ["can read secrets", "can exec into pods (pods/exec)"],
    "edit": ["can read secrets", "can exec into pods (pods/exec)"],
}

_NOTEBOOK_WORDS = re.compile(r"jupyter|notebook|ipykernel|voila|marimo", re.I)
_NOTEBOOK_PORT = 8888


@dataclass
class Obj:
    doc: dict
    file: str

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def meta(self) -> dict:
        m = self.doc.get("metadata")
        return m if isinstance(m, dict) else {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.meta.get("generateName") or "?")

    @property
    def namespace(self) -> str | None:
        if self.kind in _CLUSTER_SCOPED:
            return None
        return str(self.meta.get("namespace") or "default")

    @property
    def labels(self) -> dict:
        return _dict(self.meta.get("labels"))

    @property
    def spec(self) -> dict:
        return _dict(self.doc.get("spec"))


@dataclass
class _Report:
    findings: list[dict] = field(default_factory=list)
    _seen: set = field(default_factory=set)

    def add(self, obj_or_file: Obj | str, kind: str | None, name: str | None, finding: str) -> None:
        if isinstance(obj_or_file, Obj):
            file, kind, name = obj_or_file.file, kind or obj_or_file.kind, name or obj_or_file.name
        else:
            file = obj_or_file
        key = (file, kind, name, finding)
        if key not in self._seen:
            self._seen.add(key)
            self.findings.append({"file": file, "kind": kind, "name": name, "finding": finding})


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _get(d: Any, path: Iterable[str]) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _files(paths: list[str]) -> list[tuple[str, bool]]:
    """(file, given_explicitly) for every path; directories are searched for YAML/JSON files."""
    out: list[tuple[str, bool]] = []
    for p in paths:
        if p == "-":
            out.append(("-", True))
            continue
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
            if not found:
                raise AuditInputError(
                    f"{p}: no .yaml, .yml or .json files in this directory; "
                    "pass manifest files or the output of `kubectl get ... -o yaml`"
                )
            out.extend((str(f), False) for f in found)
        elif path.is_file():
            out.append((str(path), True))
        else:
            raise AuditInputError(
                f"{p}: no such file or directory; pass manifest files or `kubectl get -o yaml` output"
            )
    return out


def _read(file: str) -> str:
    try:
        if file == "-":
            text = sys.stdin.read(_MAX_BYTES + 1)
        else:
            with open(file, "rb") as fh:
                raw = fh.read(_MAX_BYTES + 1)
            text = raw.decode("utf-8")
    except OSError as e:
        raise AuditInputError(
            f"{file}: cannot read it ({e.strerror or e}); check the path and its permissions"
        ) from None
    except UnicodeDecodeError:
        raise AuditInputError(f"{file}: not UTF-8 text; pass YAML or JSON manifests") from None
    if len(text) > _MAX_BYTES:
        raise AuditInputError(f"{file}: larger than {_MAX_BYTES // (1024 * 1024)} MiB; audit it in smaller parts")
    return text


def _flatten(doc: Any, depth: int = 0) -> Iterator[dict]:
    """Objects of a document, unwrapping `kind: List` (kubectl get -o yaml) and typed lists (PodList...).
    Lists nest at most a few levels deep: a self-referencing YAML alias cannot recurse forever."""
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return
    if doc["kind"] == "List" or (doc["kind"].endswith("List") and isinstance(doc.get("items"), list)):
        if depth < 3:
            for item in _list(doc.get("items")):
                yield from _flatten(item, depth + 1)
        return
    yield doc


def load_objects(paths: list[str]) -> list[Obj]:
    """Every Kubernetes object in `paths`. Raises AuditInputError (one line) on anything that cannot be audited."""
    if not paths:
        raise AuditInputError(
            "no input: pass manifest files, directories, or `-` for `kubectl get ... -o yaml` on stdin"
        )
    objs: list[Obj] = []
    for file, explicit in _files(paths):
        text = _read(file)
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise AuditInputError(
                f"{file}: not valid YAML{where} ({problem}); fix the syntax or pass `kubectl get ... -o yaml` output"
            ) from None
        found = [Obj(d, file) for doc in docs for d in _flatten(doc)]
        if explicit and not found:
            raise AuditInputError(
                f"{file}: holds no Kubernetes objects (no document with apiVersion/kind); "
                "pass manifests or `kubectl get ... -o yaml` output"
            )
        objs.extend(found)
    if not objs:
        raise AuditInputError(
            f"no Kubernetes objects in {', '.join(paths)}; pass manifests or `kubectl get ... -o yaml` output"
        )
    return objs


# ---------------------------------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------------------------------


def _pod_template(obj: Obj) -> tuple[dict, dict] | None:
    """(pod labels, pod spec) of a Pod or of a workload's pod template."""
    if obj.kind == "Pod":
        return obj.labels, obj.spec
    path = _POD_TEMPLATE_PATHS.get(obj.kind)
    if path is None:
        return None
    tmpl = _get(obj.doc, path)
    if not isinstance(tmpl, dict):
        return None
    return _dict(_get(tmpl, ("metadata", "labels"))), _dict(tmpl.get("spec"))


def _containers(spec: dict) -> list[dict]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in _list(spec.get(key))
        if isinstance(c, dict)
    ]


def _is_notebook_pod(obj: Obj, labels: dict, spec: dict) -> bool:
    if obj.kind == "Notebook":
        return True
    if any(_NOTEBOOK_WORDS.search(str(v)) for v in labels.values()):
        return True
    for c in _containers(spec):
        words = [str(c.get("image", "")), str(c.get("name", ""))]
        words += [str(x) for x in _list(c.get("command")) + _list(c.get("args"))]
        if any(_NOTEBOOK_WORDS.search(w) for w in words):
            return True
        if any(_dict(p).get("containerPort") == _NOTEBOOK_PORT for p in _list(c.get("ports"))):
            return True
    return False


def _check_pod(obj: Obj, spec: dict, sa_automount: dict[tuple[str, str], Any], rep: _Report) -> None:
    pod_sc = _dict(spec.get("securityContext"))

    # Host namespaces: a pod sharing the node's network, PID or IPC namespace can sniff, signal or read every other
    # workload on the node (training data, model weights, other tenants' traffic).
    for key, what in (("hostNetwork", "network"), ("hostPID", "PID"), ("hostIPC", "IPC")):
        if spec.get(key) is True:
            rep.add(obj, None, None, f"shares the node's {what} namespace ({key}: true)")

    # hostPath volumes: the container runtime socket or the node's filesystem is a container escape.
    for v in _list(spec.get("volumes")):
        hp = _dict(_dict(v).get("hostPath"))
        if hp:
            rep.add(obj, None, None, f"mounts hostPath {hp.get('path', '?')} (volume {_dict(v).get('name', '?')})")

    # Token automount: a stolen pod (RCE in a notebook or inference server) gets a Kubernetes API credential for free.
    # The pod's own field wins; unset, the service account's field decides; unset there too, the token is mounted.
    pod_am = spec.get("automountServiceAccountToken")
    sa = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    if pod_am is True:
        rep.add(obj, None, None, "mounts the service-account token (automountServiceAccountToken: true)")
    elif pod_am is not False and sa_automount.get((obj.namespace or "default", sa)) is not False:
        rep.add(
            obj,
            None,
            None,
            f"mounts the service-account token: set automountServiceAccountToken: false "
            f"on the pod or on service account {sa}",
        )

    for c in _containers(spec):
        cname = c.get("name", "?")
        sc = _dict(c.get("securityContext"))

        # Privileged containers have every capability and the host's devices: a container escape by configuration.
        if sc.get("privileged") is True:
            rep.add(obj, None, None, f"container {cname} runs privileged")

        # Root: a process running as UID 0 turns any container escape or writable host mount into node root.
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_user == 0:
            rep.add(obj, None, None, f"container {cname} runs as root (runAsUser: 0)")
        elif non_root is not True and run_as_user is None:
            rep.add(obj, None, None, f"container {cname} may run as root: set runAsNonRoot: true")

        # setuid binaries (sudo, su) let a compromised process regain root unless escalation is off.
        if sc.get("allowPrivilegeEscalation") is not False:
            rep.add(
                obj, None, None, f"container {cname} allows privilege escalation: set allowPrivilegeEscalation: false"
            )

        # Added capabilities (SYS_ADMIN, NET_RAW, SYS_PTRACE...) are privilege in pieces.
        added = [str(x) for x in _list(_dict(sc.get("capabilities")).get("add")) if str(x) != "NET_BIND_SERVICE"]
        if added:
            rep.add(obj, None, None, f"container {cname} adds capabilities {', '.join(added)}")


# ---------------------------------------------------------------------------------------------------------------
# Notebooks exposed outside the cluster
# ---------------------------------------------------------------------------------------------------------------


def _selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _notebook_services(objs: list[Obj], notebook_pods: list[tuple[Obj, dict]]) -> set[tuple[str, str]]:
    out = set()
    for s in objs:
        if s.kind != "Service":
            continue
        selector = _dict(s.spec.get("selector"))
        by_pod = any(p.namespace == s.namespace and _selector_matches(selector, labels) for p, labels in notebook_pods)
        by_name = bool(_NOTEBOOK_WORDS.search(s.name)) or any(_NOTEBOOK_WORDS.search(str(v)) for v in selector.values())
        by_port = any(
            _dict(p).get("port") == _NOTEBOOK_PORT or _dict(p).get("targetPort") == _NOTEBOOK_PORT
            for p in _list(s.spec.get("ports"))
        )
        if by_pod or by_name or by_port:
            out.add((s.namespace or "default", s.name))
    return out


def _ingress_backends(obj: Obj) -> list[str]:
    spec = obj.spec
    names = []
    backends = [spec.get("defaultBackend"), spec.get("backend")]
    for rule in _list(spec.get("rules")):
        for p in _list(_get(rule, ("http", "paths"))):
            backends.append(_dict(p).get("backend"))
    for b in backends:
        b = _dict(b)
        n = _get(b, ("service", "name")) or b.get("serviceName")
        if n:
            names.append(str(n))
    return names


def _check_notebook_exposure(objs: list[Obj], notebook_pods: list[tuple[Obj, dict]], rep: _Report) -> None:
    nb_services = _notebook_services(objs, notebook_pods)

    def is_nb(ns: str, name: str) -> bool:
        return (ns, name) in nb_services or bool(_NOTEBOOK_WORDS.search(name))

    for o in objs:
        ns = o.namespace or "default"
        # The seed incident: a Jupyter server reachable from outside the cluster for seven months. A notebook is a
        # remote shell with the training data and credentials mounted; it must only be reached through
        # `kubectl port-forward` or an authenticating proxy, never published.
        if o.kind == "Service" and (ns, o.name) in nb_services:
            stype = str(o.spec.get("type") or "ClusterIP")
            if stype in ("NodePort", "LoadBalancer"):
                rep.add(o, None, None, f"exposes a notebook server outside the cluster (type: {stype})")
            if _list(o.spec.get("externalIPs")):
                rep.add(o, None, None, "exposes a notebook server outside the cluster (externalIPs)")
        elif o.kind == "Ingress":
            for b in _ingress_backends(o):
                if is_nb(ns, b):
                    rep.add(o, None, None, f"exposes a notebook server outside the cluster (Ingress to service {b})")
        elif o.kind in ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute"):  # Gateway API
            for rule in _list(o.spec.get("rules")):
                for ref in _list(_dict(rule).get("backendRefs")):
                    n = str(_dict(ref).get("name", ""))
                    if n and is_nb(str(_dict(ref).get("namespace") or ns), n):
                        rep.add(
                            o, None, None, f"exposes a notebook server outside the cluster ({o.kind} to service {n})"
                        )
        elif o.kind == "Route":  # OpenShift
            n = str(_get(o.spec, ("to", "name")) or "")
            if n and is_nb(ns, n):
                rep.add(o, None, None, f"exposes a notebook server outside the cluster (Route to service {n})")


# ---------------------------------------------------------------------------------------------------------------
# RBAC
# ---------------------------------------------------------------------------------------------------------------


def _rule_grants(rules: list) -> list[str]:
    out = []
    for r in rules:
        r = _dict(r)
        groups = {str(x) for x in _list(r.get("apiGroups"))} or {""}
        resources = {str(x) for x in _list(r.get("resources"))}
        verbs = {str(x) for x in _list(r.get("verbs"))}
        core = "" in groups or "*" in groups
        if "*" in verbs and "*" in resources and "*" in groups:
            out.append("grants every verb on every resource (cluster-admin in all but name)")
            continue
        if core and (resources & {"secrets", "*"}) and (verbs & {"get", "list", "watch", "*"}):
            out.append("can read secrets")
        if core and (resources & {"pods/exec", "pods/*", "*"}) and (verbs & {"create", "get", "*"}):
            out.append("can exec into pods (pods/exec)")
        if verbs & {"escalate", "bind", "impersonate"}:
            out.append(f"can {'/'.join(sorted(verbs & {'escalate', 'bind', 'impersonate'}))} (privilege escalation)")
    return list(dict.fromkeys(out))


def _sa_subjects(binding: Obj) -> list[str]:
    """Service accounts (outside the control plane) a binding grants to, as ns/name; groups of SAs as written."""
    out = []
    for s in _list(binding.doc.get("subjects")):
        s = _dict(s)
        kind, name = s.get("kind"), str(s.get("name", ""))
        if kind == "ServiceAccount":
            ns = str(s.get("namespace") or binding.namespace or "default")
            if ns not in SYSTEM_NAMESPACES:
                out.append(f"ServiceAccount {ns}/{name}")
        elif kind == "Group" and (
            name.startswith("system:serviceaccounts") or name in ("system:authenticated", "system:unauthenticated")
        ):
            out.append(f"Group {name}")
    return out


def _check_rbac(objs: list[Obj], rep: _Report) -> None:
    roles = {(o.namespace, o.name): o for o in objs if o.kind == "Role"}
    cluster_roles = {o.name: o for o in objs if o.kind == "ClusterRole"}

    for o in objs:
        # A namespaced Role in an ML namespace that reads secrets or execs into pods: whoever holds it reads the
        # signing key and registry credentials, or runs commands in the trainer and poisons the model.
        if o.kind == "Role" and o.namespace not in SYSTEM_NAMESPACES:
            for g in _rule_grants(_list(o.doc.get("rules"))):
                rep.add(o, None, None, g)
        if o.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if o.namespace in SYSTEM_NAMESPACES:
            continue
        subjects = _sa_subjects(o)
        if not subjects:
            continue
        ref = _dict(o.doc.get("roleRef"))
        ref_kind, ref_name = ref.get("kind"), str(ref.get("name", ""))
        who = ", ".join(subjects)
        # cluster-admin bound to a workload identity: one compromised training or inference pod owns the cluster.
        if ref_kind == "ClusterRole" and ref_name == "cluster-admin":
            rep.add(o, None, None, f"binds cluster-admin to {who}")
            continue
        if ref_kind == "ClusterRole":
            grants = (
                _rule_grants(_list(cluster_roles[ref_name].doc.get("rules")))
                if ref_name in cluster_roles
                else _BUILTIN_GRANTS.get(ref_name, [])
            )
        else:
            role = roles.get((o.namespace, ref_name))
            grants = _rule_grants(_list(role.doc.get("rules"))) if role else []
        for g in grants:
            rep.add(o, None, None, f"gives {who} {ref_kind} {ref_name}, which {g}")


# ---------------------------------------------------------------------------------------------------------------
# Network segmentation
# ---------------------------------------------------------------------------------------------------------------


def _selects_all(selector: Any) -> bool:
    s = _dict(selector)
    return not s.get("matchLabels") and not s.get("matchExpressions")


def _policy_types(spec: dict) -> set[str]:
    types = {str(t) for t in _list(spec.get("policyTypes"))}
    if not types:  # Kubernetes' default when policyTypes is omitted
        types = {"Ingress"} | ({"Egress"} if "egress" in spec else set())
    return types


def _label_selector_matches(selector: Any, labels: dict) -> bool:
    s = _dict(selector)
    for k, v in _dict(s.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for e in _list(s.get("matchExpressions")):
        e = _dict(e)
        key, op, values = str(e.get("key")), e.get("operator"), [str(x) for x in _list(e.get("values"))]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _cidr_may_hold_pods(cidr: Any) -> bool:
    try:
        net = ipaddress.ip_network(str(cidr), strict=False)
    except ValueError:
        return True  # unparseable: assume the worst
    return any(net.version == p.version and net.overlaps(p) for p in _POD_NETWORKS)


def _peer_may_be(peer: Any, ns: str, own_ns: str, ns_labels: dict[str, dict]) -> bool:
    """Can a NetworkPolicy peer (written in namespace own_ns) match some pod of namespace ns?"""
    p = _dict(peer)
    if "ipBlock" in p:
        return _cidr_may_hold_pods(_dict(p["ipBlock"]).get("cidr"))
    if "namespaceSelector" in p:
        return _label_selector_matches(p["namespaceSelector"], ns_labels.get(ns, {"kubernetes.io/metadata.name": ns}))
    if "podSelector" in p:  # a pod selector alone means pods of the policy's own namespace
        return ns == own_ns
    return True  # an empty peer: be conservative


def _allows(policies: list[Obj], direction: str, other_ns: str, ns_labels: dict[str, dict]) -> str | None:
    """The first policy of a namespace that allows traffic in `direction` ("ingress"/"egress") from/to namespace
    other_ns, as ns/name; None when none does."""
    key = "from" if direction == "ingress" else "to"
    for pol in policies:
        if direction.capitalize() not in _policy_types(pol.spec):
            continue
        for rule in _list(pol.spec.get(direction)):
            peers = _list(_dict(rule).get(key))
            # A rule without peers allows every source/destination.
            if not peers or any(_peer_may_be(p, other_ns, pol.namespace or "default", ns_labels) for p in peers):
                return f"NetworkPolicy {pol.namespace}/{pol.name}"
    return None


def _tier(ns: str, labels: dict) -> str | None:
    t = labels.get(TIER_LABEL)
    if t in ("training", "serving"):
        return t
    if _TRAINING_NAME.search(ns):
        return "training"
    if _SERVING_NAME.search(ns):
        return "serving"
    return None


def _check_network(objs: list[Obj], rep: _Report) -> None:
    ns_objs = {o.name: o for o in objs if o.kind == "Namespace"}
    namespaces: dict[str, Obj] = {}  # namespace -> the object findings about it are attributed to
    for o in objs:
        if o.kind == "Namespace":
            namespaces[o.name] = o
        elif o.namespace is not None and o.namespace not in namespaces:
            namespaces[o.namespace] = ns_objs.get(o.namespace, o)
    namespaces = {n: o for n, o in namespaces.items() if n not in SYSTEM_NAMESPACES}
    ns_labels = {n: {**o.labels, "kubernetes.io/metadata.name": n} for n, o in ns_objs.items()}
    policies: dict[str, list[Obj]] = {}
    for o in objs:
        if o.kind == "NetworkPolicy":
            policies.setdefault(o.namespace or "default", []).append(o)

    deny: dict[str, set[str]] = {}
    for ns in namespaces:
        deny[ns] = set()
        for pol in policies.get(ns, []):
            spec = pol.spec
            if not _selects_all(spec.get("podSelector")):
                continue
            types = _policy_types(spec)
            if "Ingress" in types and not _list(spec.get("ingress")):
                deny[ns].add("ingress")
            if "Egress" in types and not _list(spec.get("egress")):
                deny[ns].add("egress")

    for ns, at in namespaces.items():
        # No default-deny: every pod of the namespace is reachable from (and can reach) every pod in the cluster,
        # so one compromised workload anywhere reaches the trainer, the data store or the model server.
        missing = [d for d in ("ingress", "egress") if d not in deny[ns]]
        if missing:
            rep.add(
                at.file,
                "Namespace",
                ns,
                f"no default-deny NetworkPolicy for {' and '.join(missing)} (podSelector: {{}}, "
                f"policyTypes {[d.capitalize() for d in missing]}, no rules)",
            )

    tiers = {ns: _tier(ns, ns_labels.get(ns, {})) for ns in namespaces}
    for t_ns, t_tier in tiers.items():
        if t_tier != "training":
            continue
        for s_ns, s_tier in tiers.items():
            if s_tier != "serving" or s_ns == t_ns:
                continue
            # Training must never reach production serving: a poisoned or compromised training job would otherwise
            # swap or probe the live model, bypassing the signing and approval gates.
            out_ok = (
                "no default-deny egress in " + t_ns
                if "egress" not in deny[t_ns]
                else _allows(policies.get(t_ns, []), "egress", s_ns, ns_labels)
            )
            in_ok = (
                "no default-deny ingress in " + s_ns
                if "ingress" not in deny[s_ns]
                else _allows(policies.get(s_ns, []), "ingress", t_ns, ns_labels)
            )
            if out_ok and in_ok:
                rep.add(
                    namespaces[t_ns].file,
                    "Namespace",
                    t_ns,
                    f"training namespace {t_ns} can reach serving namespace {s_ns} "
                    f"(egress: {out_ok}; ingress: {in_ok})",
                )


# ---------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------


def audit_objects(objs: list[Obj]) -> list[dict]:
    rep = _Report()
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
        pt = _pod_template(o)
        if pt is None:
            continue
        labels, spec = pt
        _check_pod(o, spec, sa_automount, rep)
        if _is_notebook_pod(o, labels, spec):
            notebook_pods.append((o, labels))

    _check_notebook_exposure(scoped, notebook_pods, rep)
    _check_rbac(objs, rep)
    _check_network(objs, rep)
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
        print("usage: python3 -m gates.deploy_audit PATH... (files, directories, or - for stdin)")
        return 0
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["audit_paths", "run_cli", "audit_objects", "load_objects", "AuditInputError", "format_finding"]
