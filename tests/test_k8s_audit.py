"""`airlock audit` (audit.k8s): the templates audit clean, every seeded misconfiguration is found, and input
that cannot be audited is an error, never a clean result."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from audit.k8s import audit_paths, run_cli
from gates._result import Verdict

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "templates" / "k8s"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "misconfig"

# Each fixture holds one misconfiguration (sometimes two facets of it). It is audited together with the clean
# templates, so the namespaces and policies around it are the baseline's and every finding is the fixture's.
# (fixture, [(kind, name, text the finding must contain)]) - and nothing else may be found.
SEEDED = [
    # The seed's seven-month-exposed Jupyter, three ways out of the cluster.
    (
        "notebook-nodeport.yaml",
        [("Service", "research", "exposes a notebook server outside the cluster (type: NodePort)")],
    ),
    (
        "notebook-loadbalancer.yaml",
        [("Service", "jupyter-lab", "exposes a notebook server outside the cluster (type: LoadBalancer)")],
    ),
    (
        "notebook-ingress.yaml",
        [("Ingress", "data-science", "exposes a notebook server outside the cluster (Ingress to service notebook)")],
    ),
    ("kubectl-list.yaml", [("Service", "hub", "exposes a notebook server outside the cluster (type: LoadBalancer)")]),
    # Namespaces without default-deny.
    ("no-default-deny.yaml", [("Namespace", "ml-experiments", "no default-deny NetworkPolicy for ingress and egress")]),
    (
        "default-deny-ingress-only.yaml",
        [("Namespace", "feature-pipelines", "no default-deny NetworkPolicy for egress")],
    ),
    # cluster-admin (or its equivalent) bound to ML service accounts.
    (
        "cluster-admin-binding.yaml",
        [
            (
                "ClusterRoleBinding",
                "trainer-admin",
                "binds cluster-admin to ServiceAccount airlock-training/airlock-trainer",
            )
        ],
    ),
    (
        "wildcard-clusterrole.yaml",
        [("ClusterRoleBinding", "ml-platform-operator", "grants every verb on every resource")],
    ),
    (
        "binding-edit-to-sa.yaml",
        [
            ("RoleBinding", "inference-edit", "ClusterRole edit, which can read secrets"),
            ("RoleBinding", "inference-edit", "ClusterRole edit, which can exec into pods"),
        ],
    ),
    ("role-reads-secrets.yaml", [("Role", "trainer-secrets", "can read secrets")]),
    ("role-pods-exec.yaml", [("Role", "debug-exec", "can exec into pods (pods/exec)")]),
    # Privileged or root pods.
    (
        "privileged-pod.yaml",
        [
            ("Pod", "gpu-debug", "container trainer runs privileged"),
            ("Pod", "gpu-debug", "container trainer allows privilege escalation"),
        ],
    ),
    ("root-pod.yaml", [("Deployment", "inference-root", "container server runs as root (runAsUser: 0)")]),
    ("maybe-root-pod.yaml", [("Job", "retrain-adhoc", "container trainer may run as root: set runAsNonRoot: true")]),
    ("privilege-escalation.yaml", [("Pod", "evaluator", "container eval allows privilege escalation")]),
    ("added-capabilities.yaml", [("StatefulSet", "dataset-mounter", "container mounter adds capabilities SYS_ADMIN")]),
    (
        "host-namespaces.yaml",
        [
            ("DaemonSet", "gpu-profiler", "shares the node's network namespace (hostNetwork: true)"),
            ("DaemonSet", "gpu-profiler", "shares the node's PID namespace (hostPID: true)"),
        ],
    ),
    ("hostpath-runtime-socket.yaml", [("Pod", "image-builder", "mounts hostPath /run/containerd/containerd.sock")]),
    # Automounted tokens, on the pod and through the service account.
    (
        "automount-token-pod.yaml",
        [("Deployment", "batch-scorer", "mounts the service-account token (automountServiceAccountToken: true)")],
    ),
    (
        "automount-token-sa.yaml",
        [
            ("ServiceAccount", "drift-monitor", "automounts its token into pods"),
            ("CronJob", "drift-report", "on the pod or on service account drift-monitor"),
        ],
    ),
    # Training allowed to reach serving.
    (
        "training-reaches-serving.yaml",
        [
            (
                "Namespace",
                "airlock-training",
                "training namespace airlock-training can reach serving namespace "
                "airlock-serving (egress: NetworkPolicy airlock-training/allow-egress-to-serving; "
                "ingress: NetworkPolicy airlock-serving/allow-ingress-from-training)",
            )
        ],
    ),
    (
        "training-reaches-serving-open.yaml",
        [
            (
                "Namespace",
                "airlock-training",
                "egress: NetworkPolicy airlock-training/allow-all-egress; "
                "ingress: NetworkPolicy airlock-serving/allow-from-cluster",
            )
        ],
    ),
]


def test_every_fixture_is_seeded_in_a_test():
    assert {f for f, _ in SEEDED} == {p.name for p in FIXTURES.glob("*.yaml")}


def test_templates_audit_clean(capsys):
    result = audit_paths([str(K8S)])
    assert result.verdict is Verdict.PASS and result.evidence["findings"] == [], result.evidence["findings"]
    assert result.gate == "k8s_audit" and result.code == "k8s_audit.pass"
    assert run_cli([str(K8S)]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no findings" in out.err


@pytest.mark.parametrize("fixture,expected", SEEDED, ids=[f for f, _ in SEEDED])
def test_seeded_misconfiguration_is_found(fixture, expected):
    result = audit_paths([str(K8S), str(FIXTURES / fixture)])
    assert result.verdict is Verdict.FAIL
    findings = result.evidence["findings"]
    for kind, name, text in expected:
        assert any(f["kind"] == kind and f["name"] == name and text in f["finding"] for f in findings), (
            f"{kind}/{name}: {text!r} not in {findings}"
        )
    # Nothing else: the clean templates around the fixture stay clean, each check fires for its own problem only.
    unexpected = [
        f for f in findings if not any(f["kind"] == k and f["name"] == n and t in f["finding"] for k, n, t in expected)
    ]
    assert unexpected == []
    assert all(set(f) == {"file", "kind", "name", "finding"} for f in findings)


def test_cli_prints_one_finding_a_line_and_exits_1(capsys):
    fixture = FIXTURES / "notebook-nodeport.yaml"
    assert run_cli([str(K8S), str(fixture)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{fixture}: Service/research: exposes a notebook server outside the cluster (type: NodePort)"]


def test_a_fixture_alone_is_also_found_without_the_templates():
    result = audit_paths([str(FIXTURES / "cluster-admin-binding.yaml")])
    assert result.verdict is Verdict.FAIL
    assert "binds cluster-admin" in result.reason


def test_console_entry_point_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "audit.k8s", str(FIXTURES / "root-pod.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "runs as root" in proc.stdout
    assert "Traceback" not in proc.stderr


# --- the shapes `kubectl get` prints -----------------------------------------------------------------------------


def test_stdin_and_typed_lists_as_kubectl_prints_them(monkeypatch, capsys):
    ns = {
        "apiVersion": "v1",
        "kind": "NamespaceList",
        "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "model-serving"}}],
    }
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(ns)))
    assert run_cli(["-"]) == 1
    assert "-: Namespace/model-serving: no default-deny NetworkPolicy" in capsys.readouterr().out


def test_json_output_of_kubectl_is_read(tmp_path):
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "airlock-training"},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True},
                    "containers": [
                        {
                            "name": "c",
                            "image": "i",
                            "securityContext": {"allowPrivilegeEscalation": False, "privileged": True},
                        }
                    ],
                },
            }
        ],
    }
    f = tmp_path / "pods.json"
    f.write_text(json.dumps(doc))
    findings = audit_paths([str(K8S), str(f)]).evidence["findings"]
    assert [x["finding"] for x in findings] == ["container c runs privileged"]


def test_control_plane_namespaces_are_not_judged(tmp_path):
    # kube-proxy and CNI agents are privileged by design; they are the platform's, not the ML team's.
    f = tmp_path / "kube-system.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "kube-proxy-x", "namespace": "kube-system"},
                "spec": {
                    "hostNetwork": True,
                    "containers": [{"name": "kube-proxy", "image": "k", "securityContext": {"privileged": True}}],
                },
            }
        )
    )
    assert audit_paths([str(K8S), str(f)]).verdict is Verdict.PASS


def test_public_egress_does_not_count_as_reaching_serving(tmp_path):
    # The template's data-store rule (a public range) is not a path to pods; a private range is (fixture above).
    pol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "to-object-store", "namespace": "airlock-training"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}],
        },
    }
    f = tmp_path / "pol.yaml"
    f.write_text(yaml.safe_dump(pol))
    assert audit_paths([str(K8S), str(f)]).verdict is Verdict.PASS


# --- input that cannot be audited: exit 2, one line, the file named, no traceback --------------------------------


def _bad_inputs(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x\n")
    not_k8s = tmp_path / "values.yaml"
    not_k8s.write_text("replicas: 3\nimage: foo\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    binary = tmp_path / "blob.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    nodir = tmp_path / "nothing-here"
    nodir.mkdir()
    return {
        "unparseable": ([str(broken)], "broken.yaml: not valid YAML at line"),
        "not-kubernetes": ([str(not_k8s)], "values.yaml: holds no Kubernetes objects"),
        "empty-file": ([str(empty)], "empty.yaml: holds no Kubernetes objects"),
        "not-utf8": ([str(binary)], "blob.yaml: not UTF-8 text"),
        "missing": ([str(tmp_path / "nope.yaml")], "nope.yaml: no such file or directory"),
        "empty-dir": ([str(nodir)], "nothing-here: no .yaml, .yml or .json files"),
        "no-args": ([], "no input"),
        "bad-among-good": ([str(K8S), str(broken)], "broken.yaml: not valid YAML"),
    }


@pytest.mark.parametrize(
    "case",
    ["unparseable", "not-kubernetes", "empty-file", "not-utf8", "missing", "empty-dir", "no-args", "bad-among-good"],
)
def test_input_that_cannot_be_audited_exits_2_with_one_line(case, tmp_path, capsys):
    paths, message = _bad_inputs(tmp_path)[case]
    assert run_cli(paths) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("airlock audit: "), out.err
    # The gate fails closed on the same input.
    result = audit_paths(paths)
    assert result.verdict is Verdict.FAIL and message in result.evidence["error"]


def test_malformed_objects_do_not_crash_the_audit(tmp_path):
    """Wrong types anywhere (hand-edited manifests, partial kubectl output) give findings or none, never a crash."""
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": "x",
            "spec": {"containers": "oops", "volumes": [1, None], "securityContext": [], "initContainers": [None, "x"]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "airlock-training", "labels": []},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "securityContext": "x",
                        "ports": [None, {"containerPort": "8888"}],
                        "command": "jupyter",
                    }
                ]
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "n", "namespace": "x"},
            "spec": {"ingress": [None, {"from": "x"}], "egress": "all", "podSelector": [], "policyTypes": "Ingress"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "b"},
            "subjects": [None, "x", {"kind": "ServiceAccount"}],
            "roleRef": "y",
        },
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}, "rules": [None, "x"]},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"}, "spec": {"rules": [None]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"selector": "x", "ports": "y"}},
        {"apiVersion": "v1", "kind": "List", "items": "not a list"},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": "x"}},
    ]
    f = tmp_path / "malformed.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    result = audit_paths([str(f)])
    assert result.verdict is Verdict.FAIL and result.evidence["findings"]
    # A YAML alias that makes a List contain itself.
    loop = tmp_path / "loop.yaml"
    loop.write_text(
        "&l {apiVersion: v1, kind: List, items: [*l, {apiVersion: v1, kind: Namespace, metadata: {name: ml}}]}\n"
    )
    assert run_cli([str(loop)]) == 1
