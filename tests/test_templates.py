"""The deployment templates, checked by tools no one here wrote (actionlint, zizmor, the Kubernetes schemas) and by
structural checks of our own, each shown failing on the mistake it exists for."""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from audit.k8s import Obj, audit_objects, load_objects

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
TEMPLATES = ROOT / "templates"
K8S = TEMPLATES / "k8s"
PREFECT = TEMPLATES / "prefect"
FALCO = TEMPLATES / "falco"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "misconfig"

# The Kubernetes version every manifest is validated against (kubernetes-validate ships its schemas offline).
K8S_VERSION = "1.31"
WORKFLOW_FILES = ["retrain.yml", "retrain-keyless.yml", "ci.yml", "audit.yml"]


def _tool(name: str) -> str:
    """A command-line tool installed with the test extras, next to this Python or on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` is not installed: run ./setup.sh (it installs the test extras)")
    return found


def _load_yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# =================================================================================================================
# GitHub Actions
# =================================================================================================================


def _workflow(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def test_workflow_files_exist():
    for name in WORKFLOW_FILES:
        assert (WORKFLOWS / name).is_file(), f"missing .github/workflows/{name}"


def test_actionlint_finds_nothing():
    proc = subprocess.run(
        [_tool("actionlint"), "-no-color", *[str(WORKFLOWS / n) for n in WORKFLOW_FILES]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def _zizmor(target: Path) -> tuple[int, list]:
    # --offline: no network (online audits off); --no-config/--no-ignores: no configuration or inline comment can
    # hide a finding.
    proc = subprocess.run(
        [_tool("zizmor"), "--offline", "--no-config", "--no-ignores", "--no-progress", "--format", "json", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"zizmor printed no JSON (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.returncode, findings


def test_zizmor_finds_nothing():
    rc, findings = _zizmor(WORKFLOWS)
    summary = [(f.get("ident"), f.get("desc")) for f in findings]
    assert rc == 0 and findings == [], summary


BAD_WORKFLOW = """\
name: bad
on:
  issues:
    types: [opened]
jobs:
  greet:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.issue.title }}"
"""


def test_the_linters_do_fail_on_a_bad_workflow(tmp_path):
    """The zero-findings tests mean something only if the same tools, run the same way, catch the classic mistakes:
    an unpinned action, credentials persisted by checkout, and an issue title interpolated into a shell script."""
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "bad.yml").write_text(BAD_WORKFLOW)
    rc, findings = _zizmor(wf)
    idents = {f.get("ident") for f in findings}
    assert rc != 0
    assert {"template-injection", "unpinned-uses", "artipacked"} <= idents, idents
    proc = subprocess.run(
        [_tool("actionlint"), "-no-color", str(wf / "bad.yml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "untrusted" in proc.stdout, proc.stdout


# --- our own structural checks: pinning, permissions, checkout credentials, no expressions in scripts ----------

_USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
_VERSION_COMMENT = re.compile(r"#\s*v\d+(\.\d+)*\b")
_WRITE_ALLOWED = {("retrain.yml", "sign", "id-token"), ("retrain-keyless.yml", "retrain", "id-token")}


def workflow_problems(name: str, text: str) -> list[str]:
    """The supply-chain and privilege rules every workflow here follows, as a list of violations."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        m = _USES.match(line)
        if not m:
            continue
        ref, rest = m.group(1), m.group(2)
        # A tag or branch can be moved to malicious code (tj-actions/changed-files, 2025): pin the commit.
        if not ref.startswith("./") and not _PINNED.match(ref):
            problems.append(f"{name}:{n}: {ref} is not pinned by a full commit SHA")
        elif not ref.startswith("./") and not _VERSION_COMMENT.search(rest):
            problems.append(f"{name}:{n}: {ref} has no `# vX.Y.Z` comment naming the pinned version")
    doc = yaml.safe_load(text)
    # Least privilege: nothing at workflow level, every job states its own.
    if doc.get("permissions") not in ({}, None) or "permissions" not in doc:
        problems.append(f"{name}: workflow-level permissions must be {{}}")
    for job_id, job in (doc.get("jobs") or {}).items():
        perms = job.get("permissions")
        if perms is None:
            problems.append(f"{name}: job {job_id} does not declare permissions")
            perms = {}
        if isinstance(perms, str):
            problems.append(f"{name}: job {job_id} uses permissions: {perms}")
            perms = {}
        for scope, level in perms.items():
            if level == "write" and (name, job_id, scope) not in _WRITE_ALLOWED:
                problems.append(f"{name}: job {job_id} gets {scope}: write")
        for step in job.get("steps") or []:
            uses = str(step.get("uses", ""))
            # A persisted token in .git/config is readable by every later step and ends up in artifacts.
            if (
                uses.startswith("actions/checkout@")
                and (step.get("with") or {}).get("persist-credentials") is not False
            ):
                problems.append(f"{name}: job {job_id}: checkout without persist-credentials: false")
            # Template injection: an expression expanded into a script is code the event's author controls.
            if "run" in step and "${{" in str(step["run"]):
                problems.append(f"{name}: job {job_id}: an expression is interpolated into a run: script")
    return problems


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_workflow_follows_the_rules(name):
    assert workflow_problems(name, (WORKFLOWS / name).read_text()) == []


def test_workflow_rules_catch_each_violation():
    bad = """\
on: push
permissions: write-all
jobs:
  build:
    runs-on: ubuntu-24.04
    permissions:
      contents: write
      id-token: write
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065
      - run: echo "${{ github.head_ref }}"
  other:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
"""
    problems = "\n".join(workflow_problems("bad.yml", bad))
    for expected in (
        "actions/checkout@v4 is not pinned",
        "has no `# vX.Y.Z` comment",
        "workflow-level permissions",
        "job build gets contents: write",
        "job build gets id-token: write",
        "job other does not declare permissions",
        "checkout without persist-credentials",
        "interpolated into a run: script",
    ):
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"


def test_retrain_triggers_and_hand_over():
    wf = _workflow("retrain.yml")
    on = wf["on"]
    assert on["push"]["branches"] == ["main"] and on["push"]["paths"], "push to main, limited to training paths"
    assert "training/**" in on["push"]["paths"]
    assert on["schedule"] and "workflow_dispatch" in on
    jobs = wf["jobs"]
    # Only the signing job holds an OIDC token, and it runs no repository code (no checkout).
    with_token = [j for j, job in jobs.items() if (job.get("permissions") or {}).get("id-token") == "write"]
    assert with_token == ["sign"]
    assert not any("actions/checkout" in str(s.get("uses", "")) for s in jobs["sign"]["steps"])
    assert "sigstore sign" in json.dumps(jobs["sign"]["steps"])
    # The hand-over: the deployment run is queued, never watched (the flow waits days for approvals).
    start = "\n".join(str(s.get("run", "")) for s in jobs["start-run"]["steps"])
    code = "\n".join(line.split("#", 1)[0] for line in start.splitlines())
    assert "prefect deployment run" in code and "--no-watch" in code
    assert not re.search(r"--watch\b", code)
    assert "airlock approve" in start
    assert jobs["start-run"]["needs"] == "sign" and jobs["sign"]["needs"] == "request"
    assert all(job.get("timeout-minutes") for job in jobs.values())


def test_the_keyless_workflow_signs_on_the_airlock_machine_with_the_only_token():
    """retrain-keyless.yml: the one job with an OIDC token runs on the self-hosted Airlock machine, checks out without
    credentials, never installs anything from the checkout, and runs the flow (whose sandbox keeps the token-request
    variables from team code: tests/test_signing_modes.py)."""
    wf = _workflow("retrain-keyless.yml")
    assert wf["on"]["push"]["branches"] == ["main"] and "training/**" in wf["on"]["push"]["paths"]
    (job_id, job), *more = wf["jobs"].items()
    assert not more and job["permissions"] == {"contents": "read", "id-token": "write"}
    assert job["runs-on"] == ["self-hosted", "airlock"] and job["if"] == "github.ref == 'refs/heads/main'"
    assert job["environment"] == "retrain" and job["timeout-minutes"] >= 24 * 60
    script = "\n".join(line.split("#", 1)[0] for s in job["steps"] for line in str(s.get("run", "")).splitlines())
    assert 'airlock run --config "$AIRLOCK_CONFIG"' in script
    assert not re.search(r"pip install|\./setup\.sh|python3? -m|training-repo/", script), script
    checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"] == {"path": "training-repo", "fetch-depth": 0, "persist-credentials": False}


def test_ci_runs_the_readme_test_command():
    """The workflow runs .ci/run; .ci/run is the README's set-up and test command, lint and types in between."""
    steps = _workflow("ci.yml")["jobs"]["test"]["steps"]
    assert any(s.get("run", "").strip() == "bash .ci/run" for s in steps)
    root = Path(__file__).resolve().parents[1]
    lines = [x for x in (root / ".ci" / "run").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines[lines.index("./setup.sh") :] == [
        "./setup.sh",
        "python3 -m ruff check .",
        "python3 -m ruff format --check .",
        "python3 -m mypy",
        "python3 -m pytest -q",
    ]
    assert "./setup.sh && python3 -m pytest -q" in (root / "README.md").read_text()


def test_audit_runs_weekly():
    wf = _workflow("audit.yml")
    assert wf["on"]["schedule"][0]["cron"].split()[-1] not in ("*", ""), "a weekly cron (fixed day of week)"
    text = (WORKFLOWS / "audit.yml").read_text()
    assert "audit.k8s templates/k8s" in text and "kubectl get" in text


# =================================================================================================================
# Kubernetes
# =================================================================================================================


def _k8s_docs(paths) -> list[tuple[str, dict]]:
    out = []
    for p in paths:
        for d in _load_yaml_docs(p):
            items = d.get("items", []) if d.get("kind") == "List" else [d]
            out.extend((f"{p.name}:{i.get('kind')}/{i['metadata'].get('name')}", i) for i in items)
    return out


K8S_FILES = sorted(K8S.glob("*.yaml"))
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


def test_k8s_templates_exist():
    assert {p.name for p in K8S_FILES} >= {"namespaces.yaml", "networkpolicies.yaml", "rbac.yaml"}


@pytest.mark.parametrize(
    "label,doc", _k8s_docs(K8S_FILES + FIXTURE_FILES), ids=lambda x: x if isinstance(x, str) else ""
)
def test_manifest_validates_against_kubernetes_schema(label, doc):
    # strict: an unknown (misspelled) field is an error, not silently dropped hardening.
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_inference_server_reads_only_what_its_init_container_verified():
    """Verified loading on the Kubernetes path: `airlock verify --export` in an init container writes the verified
    bytes to an emptyDir; the server mounts that read-only and never sees the registry."""
    [dep] = [d for d in yaml.safe_load_all((K8S / "inference.yaml").read_text()) if d and d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    [init] = pod["initContainers"]
    assert init["command"] == ["airlock"] and init["args"][:1] == ["verify"]
    export = init["args"][init["args"].index("--export") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert export.startswith(mounts["models"]["mountPath"] + "/") and "emptyDir" in volumes["models"]
    assert mounts["registry"]["readOnly"] is True and volumes["registry"]["persistentVolumeClaim"]["readOnly"]
    [server] = pod["containers"]
    served = {m["name"]: m for m in server["volumeMounts"]}
    assert served["models"]["readOnly"] is True and "registry" not in served and "policy" not in served
    assert export in server["args"]


def test_schema_validation_catches_a_misspelled_field():
    doc = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "x"},
        "automountServiceAccountTokn": False,
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_namespaces_enforce_restricted_pod_security():
    docs = [d for _, d in _k8s_docs([K8S / "namespaces.yaml"])]
    tiers = {d["metadata"]["labels"]["airlock.dev/tier"] for d in docs}
    assert tiers == {"training", "serving"}
    for d in docs:
        labels = d["metadata"]["labels"]
        # Pod Security Admission refuses privileged, root and host-namespace pods at the API server.
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", d["metadata"]["name"]


def test_k8s_templates_audit_clean():
    findings = audit_objects(load_objects([str(K8S)]))
    assert findings == []


def test_network_policies_allow_only_the_listed_paths():
    pols = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d for _, d in _k8s_docs([K8S / "networkpolicies.yaml"])
    }
    peers = lambda rules, key: [p for r in rules for p in r.get(key, [])]  # noqa: E731
    ingress = [(ns, p) for (ns, _), d in pols.items() for p in peers(d["spec"].get("ingress", []), "from")]
    # Ingress only into serving, only from the API gateway.
    assert ingress == [
        ("airlock-serving", {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "api-gateway"}}})
    ]
    egress = {
        ns: [p for (n, _), d in pols.items() if n == ns for p in peers(d["spec"].get("egress", []), "to")]
        for ns in ("airlock-training", "airlock-serving")
    }
    names = lambda ps: {_get_ns_name(p) for p in ps}  # noqa: E731
    assert names(egress["airlock-serving"]) == {"feature-store", "kube-system"}
    assert names(egress["airlock-training"]) == {"airlock-registry", "kube-system", "prefect", "ipBlock:192.0.2.0/24"}


def _get_ns_name(peer: dict) -> str:
    if "ipBlock" in peer:
        return "ipBlock:" + peer["ipBlock"]["cidr"]
    return peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]


def test_service_accounts_never_automount_and_roles_are_narrow():
    docs = [d for _, d in _k8s_docs(K8S_FILES)]
    sas = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert sas and all(d["automountServiceAccountToken"] is False for d in sas)
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            for rule in d["rules"]:
                assert "secrets" not in rule["resources"] and "*" not in rule["resources"], d["metadata"]["name"]
                assert not any(r.startswith("pods/exec") or r == "pods/attach" for r in rule["resources"])
                assert "*" not in rule["verbs"]
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert d["roleRef"]["name"] != "cluster-admin"


# =================================================================================================================
# Prefect
# =================================================================================================================


def _prefect_yaml() -> dict:
    return yaml.safe_load((PREFECT / "prefect.yaml").read_text())


def _base_job_template() -> dict:
    return json.loads((PREFECT / "k8s-base-job-template.json").read_text())


def test_prefect_yaml_has_a_process_and_a_kubernetes_deployment_and_a_scheduled_watch():
    deps = {d["name"]: d for d in _prefect_yaml()["deployments"]}
    retrain = {n: d for n, d in deps.items() if n.startswith("retrain-")}
    pools = {d["work_pool"]["name"] for d in retrain.values()}
    assert pools == {"airlock-process", "airlock-kubernetes"}
    for d in retrain.values():
        assert d["entrypoint"] == deps["retrain-process"]["entrypoint"], "both deployments run the same flow"
        assert d.get("concurrency_limit") == 1
        assert not d.get("schedules") and not d.get("schedule"), "GitHub's workflow is the only trigger"
    watch = deps["watch-production"]
    assert watch["entrypoint"] == "flows/watch.py:watch" and watch["schedules"][0]["cron"]


def test_prefect_yaml_is_accepted_by_prefect():
    models = pytest.importorskip("prefect.cli.deploy._models")
    model = models.PrefectYamlModel.model_validate(_prefect_yaml())
    assert len(model.deployments) == 3
    import inspect

    import prefect.deployments.steps as steps

    for d in _prefect_yaml()["deployments"]:
        for step in d.get("pull", []):
            ((fqn, kwargs),) = step.items()
            fn = getattr(steps, fqn.rsplit(".", 1)[1])
            unknown = set(kwargs) - {"id", "requires"} - set(inspect.signature(fn).parameters)
            assert not unknown, f"{fqn} does not take {unknown}"


def test_prefect_entrypoint_names_the_flow():
    """The deployments must name the real flows and their parameters."""
    for d in _prefect_yaml()["deployments"]:
        entry = d["entrypoint"]
        path, func = entry.split(":")
        flows = [p for p in (ROOT / "flows").glob("*.py") if "@flow" in p.read_text()]
        assert (ROOT / path).exists(), f"prefect.yaml entrypoint {entry}: no file {path}; flows are in {flows}"
        tree = ast.parse((ROOT / path).read_text())
        fns = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert func in fns, f"prefect.yaml entrypoint {entry}: no function {func} in {path}"
        args = fns[func].args
        names = {a.arg for a in args.args + args.kwonlyargs}
        assert set(d.get("parameters", {})) <= names, f"{d['name']}: parameters {set(d['parameters'])} vs {names}"


def _render_job(template: dict, **overrides) -> dict:
    """The Job manifest the Kubernetes worker would submit, with the template's variable defaults filled in."""
    props = template["variables"]["properties"]
    values = {k: v.get("default") for k, v in props.items()}
    values.update(
        {
            "name": "airlock-retrain",
            "command": ["prefect", "flow-run", "execute"],
            "env": [{"name": k, "value": v} for k, v in (values.get("env") or {}).items()],
        },
        **overrides,
    )

    def fill(x):
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fill(v) for v in x]
        if isinstance(x, str):
            m = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", x)
            if m:
                return values[m.group(1)]
            return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda mm: str(values[mm.group(1)]), x)
        return x

    job = fill(copy.deepcopy(template["job_configuration"]["job_manifest"]))
    # prefect-kubernetes requires these two keys in the pod spec (a quirk of its validation); Kubernetes drops them.
    for k in ("parallelism", "completions"):
        job["spec"]["template"]["spec"].pop(k, None)
    return job


def test_k8s_base_job_template_is_hardened():
    t = _base_job_template()
    job = t["job_configuration"]["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "airlock-trainer"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A deployment's job variables cannot move the run elsewhere or loosen it: none of these is a variable.
    assert job["metadata"]["namespace"] == t["job_configuration"]["namespace"] == "airlock-training"
    assert not {"namespace", "service_account_name"} & set(t["variables"]["properties"])
    assert "{{" not in json.dumps(pod["securityContext"]) + json.dumps(sc)
    # The pod carries the label the training NetworkPolicy selects.
    assert job["spec"]["template"]["metadata"]["labels"]["airlock.dev/tier"] == "training"
    # The k8s deployment only sets variables the template defines.
    (kdep,) = [d for d in _prefect_yaml()["deployments"] if d["work_pool"]["name"] == "airlock-kubernetes"]
    assert set(kdep["work_pool"]["job_variables"]) <= set(t["variables"]["properties"])


def test_k8s_base_job_renders_to_a_valid_job_that_audits_clean():
    job = _render_job(_base_job_template())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    objs = load_objects([str(K8S)]) + [Obj(job, "k8s-base-job-template.json")]
    assert audit_objects(objs) == []


def test_audit_would_catch_a_loosened_job_template():
    job = _render_job(_base_job_template())
    pod = job["spec"]["template"]["spec"]
    del pod["automountServiceAccountToken"]
    del pod["securityContext"]["runAsNonRoot"], pod["securityContext"]["runAsUser"]
    del pod["containers"][0]["securityContext"]["runAsNonRoot"]
    objs = load_objects([str(K8S / "namespaces.yaml"), str(K8S / "networkpolicies.yaml")])
    findings = {f["finding"] for f in audit_objects(objs + [Obj(job, "job.json")])}
    assert any("may run as root" in f for f in findings), findings
    assert any("mounts the service-account token" in f for f in findings), findings


def test_process_worker_unit_is_unprivileged():
    unit = (PREFECT / "airlock-worker.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"^\w+=", line))
    assert settings["User"] not in ("root", "0")
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    assert "--pool airlock-process" in settings["ExecStart"]


# =================================================================================================================
# Falco
# =================================================================================================================

FALCO_PRIORITIES = {"EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "INFO", "DEBUG"}
FALCO_FIELD_CLASSES = {
    "evt",
    "proc",
    "thread",
    "fd",
    "fs",
    "user",
    "group",
    "container",
    "k8s",
    "syscall",
    "span",
    "fdlist",
    "k8smeta",
}
_BOOL_OPS = {"and", "or", "not"}
_UNARY_OPS = {"exists"}
_LIST_OPS = {"in", "intersects", "pmatch"}
_CMP_OPS = {
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "contains",
    "icontains",
    "bcontains",
    "startswith",
    "bstartswith",
    "endswith",
    "glob",
    "iglob",
    "regex",
}
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>!=|<=|>=|==|=|<|>)|(?P<p>[(),])|"""
    r"""(?P<word>[^\s(),=<>!'"]+))"""
)
_FIELD = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+(\[[^\]]*\])?$")


def condition_problems(condition: str, macros: set[str], lists: set[str]) -> list[str]:
    """Undefined names in a Falco condition. House style: every value inside in/intersects/pmatch (...) is a list
    defined in the file, so a misspelled list name cannot pass as a literal."""
    tokens, pos = [], 0
    while pos < len(condition.rstrip()):
        m = _TOKEN.match(condition, pos)
        if not m or m.end() == pos:
            return [f"cannot tokenise condition at: {condition[pos : pos + 30]!r}"]
        tokens.append(next((k, v) for k, v in m.groupdict().items() if v is not None))
        pos = m.end()
    problems, i = [], 0
    while i < len(tokens):
        kind, tok = tokens[i]
        if kind == "word" and _FIELD.match(tok):
            cls = tok.split(".", 1)[0]
            if cls not in FALCO_FIELD_CLASSES:
                problems.append(f"unknown field class in {tok}")
            nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
            if nxt in _UNARY_OPS:
                i += 2
            elif nxt in _LIST_OPS:
                if i + 2 >= len(tokens) or tokens[i + 2][1] != "(":
                    problems.append(f"{tok} {nxt} without a parenthesised list")
                    i += 2
                    continue
                j = i + 3
                while j < len(tokens) and tokens[j][1] != ")":
                    k2, t2 = tokens[j]
                    if k2 == "word" and t2 not in lists:
                        problems.append(f"undefined list {t2} (in {tok} {nxt} (...))")
                    j += 1
                i = j + 1
            elif nxt in _CMP_OPS or (tokens[i + 1][0] == "op" if i + 1 < len(tokens) else False):
                i += 3  # field, operator, value
            else:
                problems.append(f"field {tok} without an operator")
                i += 1
        elif kind == "word" and tok in _BOOL_OPS:
            i += 1
        elif kind == "word":
            if tok not in macros:
                problems.append(f"undefined macro {tok}")
            i += 1
        else:
            i += 1
    return problems


def _falco_items() -> list[dict]:
    docs = yaml.safe_load((FALCO / "airlock_rules.yaml").read_text())
    assert isinstance(docs, list)
    return docs


def falco_problems(items: list[dict]) -> list[str]:
    lists = {x["list"] for x in items if "list" in x}
    macros = {x["macro"] for x in items if "macro" in x}
    names = [x.get("list") or x.get("macro") or x.get("rule") for x in items if "required_engine_version" not in x]
    problems = [f"defined twice: {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    for x in items:
        if "macro" in x:
            problems += [f"macro {x['macro']}: {p}" for p in condition_problems(x["condition"], macros, lists)]
        if "list" in x:
            if not isinstance(x.get("items"), list) or not x["items"]:
                problems.append(f"list {x['list']}: items must be a non-empty list")
        if "rule" not in x:
            continue
        r = x["rule"]
        for key in ("desc", "condition", "output", "priority", "tags"):
            if not x.get(key):
                problems.append(f"rule {r}: no {key}")
        if x.get("priority") and str(x["priority"]).upper() not in FALCO_PRIORITIES:
            problems.append(f"rule {r}: priority {x['priority']} is not a Falco priority")
        if x.get("tags") and not (isinstance(x["tags"], list) and all(isinstance(t, str) for t in x["tags"])):
            problems.append(f"rule {r}: tags must be a list of strings")
        if x.get("output"):
            for field in re.findall(r"%([\w.\[\]/-]+)", x["output"]):
                if field.split(".", 1)[0] not in FALCO_FIELD_CLASSES:
                    problems.append(f"rule {r}: output field %{field} is not a Falco field")
        if x.get("condition"):
            problems += [f"rule {r}: {p}" for p in condition_problems(x["condition"], macros, lists)]
    return problems


def test_falco_rules_are_well_formed_and_self_contained():
    assert falco_problems(_falco_items()) == []


def test_falco_rules_cover_the_six_behaviours():
    rules = [x for x in _falco_items() if "rule" in x]
    conds = {x["rule"]: x["condition"] for x in rules}

    def rule_with(*needles):
        hits = [r for r, c in conds.items() if all(n in c for n in needles)]
        assert hits, f"no rule whose condition uses {needles}"
        return hits[0]

    rule_with("airlock_spawned_process", "airlock_shell_binaries", "airlock_ml_container")
    rule_with("airlock_outbound", "airlock_inference_container", "airlock_inference_allowed_networks")
    rule_with("airlock_open_write", "airlock_model_dirs")
    rule_with("airlock_sa_token_dirs")
    rule_with("airlock_package_managers")
    rule_with("airlock_notebook_binaries")
    assert len(rules) == 6
    assert all("airlock" in x["tags"] for x in rules)


def test_falco_checker_catches_each_mistake():
    bad = [
        {"list": "airlock_shells", "items": ["sh"]},
        {"macro": "airlock_spawn", "condition": "evt.type in (airlock_execs) and evt.dir = <"},
        {
            "rule": "No tags",
            "desc": "d",
            "condition": "airlock_spawn and proc.name in (airlock_shells)",
            "output": "x %proc.name",
            "priority": "WARNING",
        },
        {
            "rule": "Undefined macro",
            "desc": "d",
            "condition": "airlock_spwned and container.id != host",
            "output": "x %proc.name",
            "priority": "LOUD",
            "tags": ["t"],
        },
        {
            "rule": "Typo list",
            "desc": "d",
            "condition": "airlock_spawn and proc.name in (airlock_shell)",
            "output": "x %process.name",
            "priority": "ERROR",
            "tags": ["t"],
        },
        {
            "rule": "No tags",
            "desc": "d",
            "condition": "airlock_spawn",
            "output": "%proc.name",
            "priority": "INFO",
            "tags": ["t"],
        },
    ]
    problems = "\n".join(falco_problems(bad))
    for expected in (
        "macro airlock_spawn: undefined list airlock_execs",
        "rule No tags: no tags",
        "undefined macro airlock_spwned",
        "priority LOUD",
        "undefined list airlock_shell ",
        "output field %process.name",
        "defined twice: No tags",
    ):
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"


# =================================================================================================================
# README
# =================================================================================================================


def test_readme_has_a_section_per_template():
    text = (TEMPLATES / "README.md").read_text()
    headings = re.findall(r"^##\s+(.+)$", text, re.M)
    for needed in ("GitHub Actions", "Prefect", "Kubernetes", "Falco", "airlock audit"):
        assert any(needed.lower() in h.lower() for h in headings), f"no README section for {needed}: {headings}"
    assert "What a forking team changes" in text or "what a forking team changes" in text.lower()
    assert "prefect deployment run" in text and "airlock approve" in text


def test_the_approval_notification_automation_is_one_prefect_accepts():
    """templates/prefect/automation-approval-waiting.yaml: Prefect's own model validates it (what `prefect automation
    create --from-file` does), and it fires on the paused state of Airlock's flow, by its real name."""
    from prefect.events.schemas.automations import AutomationCore

    from flows.retrain import retrain

    data = yaml.safe_load((ROOT / "templates" / "prefect" / "automation-approval-waiting.yaml").read_text())
    (auto,) = [AutomationCore.model_validate(a) for a in data["automations"]]
    assert auto.trigger.expect == {"prefect.flow-run.Paused"}
    assert auto.trigger.match_related["prefect.resource.name"] == [retrain.name]
    (action,) = auto.actions
    assert action.type == "send-notification" and "airlock approve {{ flow_run.id }}" in action.body


def test_the_guarded_server_runs_team_code_with_no_key_and_reads_only_what_its_init_container_prepared():
    """templates/k8s/serving.yaml: `airlock serve --prepare` in the init container (registry, key, repository), the
    server `airlock serve --from` the prepared emptyDir, read-only, with none of them."""
    docs = [d for d in yaml.safe_load_all((K8S / "serving.yaml").read_text()) if d]
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    [init] = pod["initContainers"]
    assert init["args"][:2] == ["serve", "--prepare"]
    prepared = init["args"][2]
    init_mounts = {m["name"] for m in init["volumeMounts"]}
    assert {"registry", "registry-key", "training-repo", "prepared"} <= init_mounts
    [server] = pod["containers"]
    assert server["args"][:3] == ["serve", "--from", prepared]
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["prepared"]["readOnly"] is True
    assert not {"registry", "registry-key", "training-repo", "policy"} & set(mounts), "the server holds no key"
    for c in (init, server):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"]
    ingress = [d for d in docs if d["kind"] == "NetworkPolicy" and "Ingress" in d["spec"]["policyTypes"]]
    sources = {
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for s in ingress[0]["spec"]["ingress"][0]["from"]
    }
    assert sources == {"api-gateway", "monitoring"}
