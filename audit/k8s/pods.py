"""Pods and pod templates: runtime hardening, service-account tokens, notebooks in training namespaces."""

from __future__ import annotations

from typing import Any

from audit.k8s._model import NOTEBOOK_PORT, NOTEBOOK_WORDS, Obj, Report, as_dict, as_list, get_path

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


def pod_template(obj: Obj) -> tuple[dict, dict] | None:
    """(pod labels, pod spec) of a Pod or of a workload's pod template."""
    if obj.kind == "Pod":
        return obj.labels, obj.spec
    path = _POD_TEMPLATE_PATHS.get(obj.kind)
    if path is None:
        return None
    tmpl = get_path(obj.doc, path)
    if not isinstance(tmpl, dict):
        return None
    return as_dict(get_path(tmpl, ("metadata", "labels"))), as_dict(tmpl.get("spec"))


def _containers(spec: dict) -> list[dict]:
    return [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in as_list(spec.get(key))
        if isinstance(c, dict)
    ]


def is_notebook_pod(obj: Obj, labels: dict, spec: dict) -> bool:
    if obj.kind == "Notebook":
        return True
    if any(NOTEBOOK_WORDS.search(str(v)) for v in labels.values()):
        return True
    for c in _containers(spec):
        words = [str(c.get("image", "")), str(c.get("name", ""))]
        words += [str(x) for x in as_list(c.get("command")) + as_list(c.get("args"))]
        if any(NOTEBOOK_WORDS.search(w) for w in words):
            return True
        if any(as_dict(p).get("containerPort") == NOTEBOOK_PORT for p in as_list(c.get("ports"))):
            return True
    return False


def check_pod(obj: Obj, spec: dict, sa_automount: dict[tuple[str, str], Any], rep: Report) -> None:
    pod_sc = as_dict(spec.get("securityContext"))

    # Host namespaces: a pod sharing the node's network, PID or IPC namespace can sniff, signal or read every other
    # workload on the node (training data, model weights, other tenants' traffic).
    for key, what in (("hostNetwork", "network"), ("hostPID", "PID"), ("hostIPC", "IPC")):
        if spec.get(key) is True:
            rep.add(obj, None, None, f"shares the node's {what} namespace ({key}: true)")

    # hostPath volumes: the container runtime socket or the node's filesystem is a container escape.
    for v in as_list(spec.get("volumes")):
        hp = as_dict(as_dict(v).get("hostPath"))
        if hp:
            rep.add(obj, None, None, f"mounts hostPath {hp.get('path', '?')} (volume {as_dict(v).get('name', '?')})")

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
        sc = as_dict(c.get("securityContext"))

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
        added = [str(x) for x in as_list(as_dict(sc.get("capabilities")).get("add")) if str(x) != "NET_BIND_SERVICE"]
        if added:
            rep.add(obj, None, None, f"container {cname} adds capabilities {', '.join(added)}")
