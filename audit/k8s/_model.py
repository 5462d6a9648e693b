"""What the Kubernetes audit reads objects into, the report it writes findings to, and the baseline's constants."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GATE = "k8s_audit"

# The platform's own namespaces: a default-deny policy there breaks the cluster, and their pods are the platform's.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


CLUSTER_SCOPED = frozenset(
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


NOTEBOOK_WORDS = re.compile(r"jupyter|notebook|ipykernel|voila|marimo", re.I)
NOTEBOOK_PORT = 8888


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
        if self.kind in CLUSTER_SCOPED:
            return None
        return str(self.meta.get("namespace") or "default")

    @property
    def labels(self) -> dict:
        return as_dict(self.meta.get("labels"))

    @property
    def spec(self) -> dict:
        return as_dict(self.doc.get("spec"))


@dataclass
class Report:
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


def as_dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def as_list(v: Any) -> list:
    return v if isinstance(v, list) else []


def get_path(d: Any, path: Iterable[str]) -> Any:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d
