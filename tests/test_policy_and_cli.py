"""Policy validation and CLI behaviour: bad values reported by key, one line, no traceback."""

from __future__ import annotations

import pytest

from airlock import policy
from airlock.errors import PolicyError
from tests.conftest import assert_one_line_refusal, run_cli

BASE = """
[repo]
path = "repo"
[trust]
allowed_signers = "t/a"
approvers = "t/b"
model_signing_public_key = "t/c"
[data.train]
dir = "d"
manifest = "m.json"
[data.golden]
dir = "g"
manifest = "g.json"
[registry]
path = "reg"
[ledger]
path = "l.jsonl"
"""


def write(tmp_path, extra=""):
    p = tmp_path / "airlock.toml"
    p.write_text(BASE + extra)
    return p


def test_valid_policy_resolves_paths(tmp_path):
    pol = policy.load(write(tmp_path))
    assert pol.repo.path == tmp_path / "repo"
    assert pol.data.train.manifest == tmp_path / "repo" / "m.json"  # manifests live in the repository
    assert pol.trust.approvers == tmp_path / "t" / "b"
    assert pol.approval.quorum == 2 and pol.digest.startswith("sha256:")


@pytest.mark.parametrize(
    "extra, key",
    [
        ("[evaluation]\nmin_test_accuracy = 1.5\n", "evaluation.min_test_accuracy"),
        ("[evaluation]\nepsilon = 'big'\n", "evaluation.epsilon"),
        ("[approval]\nquorum = 0\n", "approval.quorum"),
        ("[approval]\nquorom = 2\n", "approval.quorom: unknown key"),
        ("[approval]\nrequire = { all_of = [] }\n", "approval.require"),
        ("[approval]\nrequire = { role = 'security', count = 0 }\n", "approval.require"),
        ("[training]\ntimeout_seconds = -1\n", "training.timeout_seconds"),
    ],
)
def test_bad_value_is_reported_by_key(tmp_path, extra, key):
    with pytest.raises(PolicyError) as e:
        policy.load(write(tmp_path, extra))
    assert key in e.value.one_line()


def test_missing_section_is_reported(tmp_path):
    p = tmp_path / "airlock.toml"
    p.write_text(BASE.replace('[ledger]\npath = "l.jsonl"\n', ""))
    with pytest.raises(PolicyError, match="ledger: missing"):
        policy.load(p)


def test_cli_reports_policy_errors_in_one_line(tmp_path):
    res = run_cli("run", "--config", str(write(tmp_path, "[approval]\nquorum = 'two'\n")))
    assert_one_line_refusal(res, 2, "approval.quorum")


def test_cli_reports_unparseable_policy(tmp_path):
    p = tmp_path / "airlock.toml"
    p.write_text("[repo\npath=")
    assert_one_line_refusal(run_cli("verify", "--config", str(p)), 2, "not valid TOML")


def test_cli_reports_missing_policy(tmp_path):
    assert_one_line_refusal(run_cli("run", "--config", str(tmp_path / "none.toml")), 2, "cannot read policy")


def test_cli_usage_error_is_one_line():
    assert_one_line_refusal(run_cli("approve"), 2, "required")


def test_model_gate_policy_defaults_are_the_calibrated_gate_defaults():
    """The policy spells the model-gate parameters out (to validate them by key), from the one list of model gates:
    every key of a gate's section is one of the gate's parameters (a renamed threshold fails here instead of quietly
    reverting to its default), every parameter the policy does not set is supplied by the run or fixed, and the
    defaults agree."""
    from dataclasses import fields

    from gates import model_gates

    assert set(model_gates.SECTIONS) <= set(policy.Policy.model_fields)
    for g in model_gates.MODEL_GATES:
        section = type(policy.Policy.model_fields[g.section].default)
        pol_keys = set(section.model_fields) - g.policy_only
        params = g.params_class()()
        param_keys = {f.name for f in fields(params)}
        assert pol_keys <= param_keys, (g.section, pol_keys - param_keys)
        for key in pol_keys:
            got, want = getattr(section(), key), getattr(params, key)
            assert (tuple(got) if isinstance(got, list) else got) == want, (g.section, key)
        assert g.supplied <= param_keys, (g.section, g.supplied - param_keys)
        built = g.build(section().model_dump(), seed=7, threads=2)  # what the evaluator does with a run
        assert all(getattr(built, k) == (7 if k == "seed" else 2) for k in g.supplied), g.section


def test_a_policy_key_the_gate_does_not_have_is_refused_not_dropped():
    from gates import model_gates

    g = model_gates.gate("robustness")
    assert g.build({"samples": 50}, seed=3, threads=1).samples == 50
    with pytest.raises(policy.PolicyError, match=r"\[robustness\] min_accuracy is not a parameter"):
        g.build({"min_accuracy": 0.9})  # e.g. a threshold renamed in the gate but not in the policy


def test_an_internal_error_is_one_line_and_exit_3(monkeypatch, capsys):
    """A bug of Airlock's (an exception that is not an AirlockError) is not 'usage' (2): it exits 3, in one line."""
    from flows import cli

    def buggy(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_audit", buggy)
    assert cli.main(["audit", "templates/k8s"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("airlock: internal error KeyError") and "report it" in err and len(err.splitlines()) == 1


def test_every_airlock_exception_lives_in_one_module():
    import inspect

    import airlock.aibom  # noqa: F401,E401
    import airlock.errors as errors
    import airlock.gitutil
    import airlock.ingest
    import airlock.modeldir
    import airlock.modelsign
    import airlock.oracle  # noqa: F401,E401
    import audit.k8s.load
    import gates.approval  # noqa: F401

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    assert {c.__module__ for c in subclasses(errors.AirlockError)} == {"airlock.errors"}
    assert inspect.getmodule(audit.k8s.load.AuditInputError) is errors


def test_airlock_core_imports_nothing_from_gates():
    """Core (airlock/) is what gates, flows and the registry build on: it never reaches back into them."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "airlock"
    crossing = []
    for f in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            crossing += [f"{f.name}: {n}" for n in names if n.split(".")[0] in ("gates", "flows", "registry")]
    # The one exception: the package's public façade airlock.load (serving code's entry point) imports verified
    # loading lazily, inside the function; no core module imports it.
    assert crossing == ["__init__.py: registry.loading"]


def test_init_refuses_what_would_make_a_weak_or_self_vouching_setup(tmp_path, keys, repo):
    """`airlock init`: one-line refusals (exit 2) for a directory that is not new, a policy inside the repository,
    a path that is no repository, an approver without roles, a default policy no approver could meet."""
    pub = lambda who: f"{who}@example.com={keys.key(who)}.pub"  # noqa: E731
    base = ["--repo", str(repo), "--train-data", str(tmp_path), "--golden-data", str(tmp_path)]
    ok_people = [
        "--signer",
        pub("dev"),
        "--approver",
        pub("alice") + ":ml-lead",
        "--approver",
        pub("bob") + ":security",
    ]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert_one_line_refusal(run_cli("init", str(tmp_path / "full"), *base, *ok_people), 2, "is not empty")
    assert_one_line_refusal(run_cli("init", str(repo / "airlock"), *base, *ok_people), 2, "inside the repository")
    bad_repo = ["--repo", str(tmp_path), "--train-data", str(tmp_path), "--golden-data", str(tmp_path)]
    assert_one_line_refusal(run_cli("init", str(tmp_path / "a"), *bad_repo, *ok_people), 2, "not a git repository")
    no_roles = ["--signer", pub("dev"), "--approver", pub("alice")]
    assert_one_line_refusal(run_cli("init", str(tmp_path / "b"), *base, *no_roles), 2, "name the roles")
    no_security = ["--signer", pub("dev"), "--approver", pub("alice") + ":ml-lead"]
    assert_one_line_refusal(run_cli("init", str(tmp_path / "c"), *base, *no_security), 2, "no security given")
    ok = run_cli("init", str(tmp_path / "d"), *base, *ok_people)
    assert ok.returncode == 0, ok.stderr
    assert (
        "airlock run --config" in ok.stderr
        and (tmp_path / "d" / "keys" / "model_signing.key").stat().st_mode & 0o077 == 0
    )
    assert "roles=security" in (tmp_path / "d" / "trust" / "approvers").read_text()


def test_a_path_under_an_unknown_users_home_is_a_policy_error(tmp_path):
    """Found by the policy fuzzer: "~rust/x" made pathlib raise RuntimeError (exit 3) instead of a refusal."""
    from airlock import policy
    from airlock.errors import PolicyError

    p = tmp_path / "airlock.toml"
    p.write_text(
        f'[repo]\npath = "{tmp_path}"\n[trust]\nallowed_signers = "a"\napprovers = "b"\n'
        'model_signing_public_key = "~no-such-user-4711/model_signing.pub"\n[data.train]\ndir = "x"\n'
        'manifest = "x.json"\n[data.golden]\ndir = "y"\nmanifest = "y.json"\n[registry]\npath = "r"\n'
        '[ledger]\npath = "l"\n'
    )
    with pytest.raises(PolicyError, match="names a home directory that does not exist here"):
        policy.load(p)


def test_demo_with_a_registry_url_that_is_not_oci_is_a_usage_error_before_anything_starts(tmp_path):
    res = run_cli("demo", "--workdir", str(tmp_path / "d"), "--registry", "https://registry.corp/ml")
    assert_one_line_refusal(res, 2, "--registry", "is not an OCI registry location")
    assert not (tmp_path / "d").exists()
