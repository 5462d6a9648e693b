"""Notebooks exposed outside the cluster: Services of type LoadBalancer/NodePort and Ingress backends."""

from __future__ import annotations

from audit.k8s._model import NOTEBOOK_PORT, NOTEBOOK_WORDS, Obj, Report, as_dict, as_list, get_path


def _selector_matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _notebook_services(objs: list[Obj], notebook_pods: list[tuple[Obj, dict]]) -> set[tuple[str, str]]:
    out = set()
    for s in objs:
        if s.kind != "Service":
            continue
        selector = as_dict(s.spec.get("selector"))
        by_pod = any(p.namespace == s.namespace and _selector_matches(selector, labels) for p, labels in notebook_pods)
        by_name = bool(NOTEBOOK_WORDS.search(s.name)) or any(NOTEBOOK_WORDS.search(str(v)) for v in selector.values())
        by_port = any(
            as_dict(p).get("port") == NOTEBOOK_PORT or as_dict(p).get("targetPort") == NOTEBOOK_PORT
            for p in as_list(s.spec.get("ports"))
        )
        if by_pod or by_name or by_port:
            out.add((s.namespace or "default", s.name))
    return out


def _ingress_backends(obj: Obj) -> list[str]:
    spec = obj.spec
    names = []
    backends = [spec.get("defaultBackend"), spec.get("backend")]
    for rule in as_list(spec.get("rules")):
        for p in as_list(get_path(rule, ("http", "paths"))):
            backends.append(as_dict(p).get("backend"))
    for b in backends:
        b = as_dict(b)
        n = get_path(b, ("service", "name")) or b.get("serviceName")
        if n:
            names.append(str(n))
    return names


def check_notebook_exposure(objs: list[Obj], notebook_pods: list[tuple[Obj, dict]], rep: Report) -> None:
    nb_services = _notebook_services(objs, notebook_pods)

    def is_nb(ns: str, name: str) -> bool:
        return (ns, name) in nb_services or bool(NOTEBOOK_WORDS.search(name))

    for o in objs:
        ns = o.namespace or "default"
        # The seed incident: a Jupyter server reachable from outside the cluster for seven months. A notebook is a
        # remote shell with the training data and credentials mounted; it must only be reached through
        # `kubectl port-forward` or an authenticating proxy, never published.
        if o.kind == "Service" and (ns, o.name) in nb_services:
            stype = str(o.spec.get("type") or "ClusterIP")
            if stype in ("NodePort", "LoadBalancer"):
                rep.add(o, None, None, f"exposes a notebook server outside the cluster (type: {stype})")
            if as_list(o.spec.get("externalIPs")):
                rep.add(o, None, None, "exposes a notebook server outside the cluster (externalIPs)")
        elif o.kind == "Ingress":
            for b in _ingress_backends(o):
                if is_nb(ns, b):
                    rep.add(o, None, None, f"exposes a notebook server outside the cluster (Ingress to service {b})")
        elif o.kind in ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute"):  # Gateway API
            for rule in as_list(o.spec.get("rules")):
                for ref in as_list(as_dict(rule).get("backendRefs")):
                    n = str(as_dict(ref).get("name", ""))
                    if n and is_nb(str(as_dict(ref).get("namespace") or ns), n):
                        rep.add(
                            o, None, None, f"exposes a notebook server outside the cluster ({o.kind} to service {n})"
                        )
        elif o.kind == "Route":  # OpenShift
            n = str(get_path(o.spec, ("to", "name")) or "")
            if n and is_nb(ns, n):
                rep.add(o, None, None, f"exposes a notebook server outside the cluster (Route to service {n})")
