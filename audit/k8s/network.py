"""Network segmentation: default-deny in every namespace, no path between training and serving tiers."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from audit.k8s._model import (
    SYSTEM_NAMESPACES,
    Obj,
    Report,
    as_dict,
    as_list,
)

# Where pod IPs can live. An ipBlock overlapping one of these may reach pods of another namespace.
_POD_NETWORKS = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
]


# Label a forking team sets on its namespaces (templates/k8s/namespaces.yaml); names are the fallback.
TIER_LABEL = "airlock.dev/tier"


_TRAINING_NAME = re.compile(r"train", re.I)


_SERVING_NAME = re.compile(r"serv|infer|predict|prod", re.I)


def _selects_all(selector: Any) -> bool:
    s = as_dict(selector)
    return not s.get("matchLabels") and not s.get("matchExpressions")


def _policy_types(spec: dict) -> set[str]:
    types = {str(t) for t in as_list(spec.get("policyTypes"))}
    if not types:  # Kubernetes' default when policyTypes is omitted
        types = {"Ingress"} | ({"Egress"} if "egress" in spec else set())
    return types


def _label_selector_matches(selector: Any, labels: dict) -> bool:
    s = as_dict(selector)
    for k, v in as_dict(s.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for e in as_list(s.get("matchExpressions")):
        e = as_dict(e)
        key, op, values = str(e.get("key")), e.get("operator"), [str(x) for x in as_list(e.get("values"))]
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
    p = as_dict(peer)
    if "ipBlock" in p:
        return _cidr_may_hold_pods(as_dict(p["ipBlock"]).get("cidr"))
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
        for rule in as_list(pol.spec.get(direction)):
            peers = as_list(as_dict(rule).get(key))
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


def check_network(objs: list[Obj], rep: Report) -> None:
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
            if "Ingress" in types and not as_list(spec.get("ingress")):
                deny[ns].add("ingress")
            if "Egress" in types and not as_list(spec.get("egress")):
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
