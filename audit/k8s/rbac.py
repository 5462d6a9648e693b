"""RBAC: least privilege for training identities, nothing bound to cluster-admin."""

from __future__ import annotations

from audit.k8s._model import SYSTEM_NAMESPACES, Obj, Report, as_dict, as_list

# Built-in ClusterRoles whose rules are not in a manifest dump of the repository: what they grant is known.
_BUILTIN_GRANTS = {
    "admin": ["can read secrets", "can exec into pods (pods/exec)"],
    "edit": ["can read secrets", "can exec into pods (pods/exec)"],
}


def _rule_grants(rules: list) -> list[str]:
    out = []
    for r in rules:
        r = as_dict(r)
        groups = {str(x) for x in as_list(r.get("apiGroups"))} or {""}
        resources = {str(x) for x in as_list(r.get("resources"))}
        verbs = {str(x) for x in as_list(r.get("verbs"))}
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
    for s in as_list(binding.doc.get("subjects")):
        s = as_dict(s)
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


def check_rbac(objs: list[Obj], rep: Report) -> None:
    roles = {(o.namespace, o.name): o for o in objs if o.kind == "Role"}
    cluster_roles = {o.name: o for o in objs if o.kind == "ClusterRole"}

    for o in objs:
        # A namespaced Role in an ML namespace that reads secrets or execs into pods: whoever holds it reads the
        # signing key and registry credentials, or runs commands in the trainer and poisons the model.
        if o.kind == "Role" and o.namespace not in SYSTEM_NAMESPACES:
            for g in _rule_grants(as_list(o.doc.get("rules"))):
                rep.add(o, None, None, g)
        if o.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if o.namespace in SYSTEM_NAMESPACES:
            continue
        subjects = _sa_subjects(o)
        if not subjects:
            continue
        ref = as_dict(o.doc.get("roleRef"))
        ref_kind, ref_name = ref.get("kind"), str(ref.get("name", ""))
        who = ", ".join(subjects)
        # cluster-admin bound to a workload identity: one compromised training or inference pod owns the cluster.
        if ref_kind == "ClusterRole" and ref_name == "cluster-admin":
            rep.add(o, None, None, f"binds cluster-admin to {who}")
            continue
        if ref_kind == "ClusterRole":
            grants = (
                _rule_grants(as_list(cluster_roles[ref_name].doc.get("rules")))
                if ref_name in cluster_roles
                else _BUILTIN_GRANTS.get(ref_name, [])
            )
        else:
            role = roles.get((o.namespace, ref_name))
            grants = _rule_grants(as_list(role.doc.get("rules"))) if role else []
        for g in grants:
            rep.add(o, None, None, f"gives {who} {ref_kind} {ref_name}, which {g}")
