"""Trust roots and the policy at decision time, and the model directory only Airlock writes.

The run copies its trust roots at the start; before every approval decision and before promotion the copies and
the policy are re-hashed (a change fails the run, naming the file) and the roots in force now are read afresh
(revocations since the start apply). The model directory is built new from the trainer's two files.
"""

from __future__ import annotations

import os
import shutil

import pytest

from airlock import modeldir, policy, trust
from airlock.errors import TrustRootError
from airlock.modeldir import ModelDirError
from flows import demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo.build(tmp_path_factory.mktemp("trust") / "demo")


def _started(demo_dir, tmp_path):
    pol = policy.load(demo_dir["policy"])
    return pol, trust.resolve(pol, tmp_path / "run" / "trust")


def test_unchanged_roots_pass_and_are_read_afresh(demo_dir, tmp_path):
    pol, roots = _started(demo_dir, tmp_path)
    now = trust.at_decision(pol, roots, tmp_path / "run" / "trust-now")
    assert now.digests == roots.digests and now.approvers != roots.approvers


@pytest.mark.parametrize("key", ["approvers", "allowed_signers", "model_signing_public_key"])
def test_a_run_copy_changed_under_the_run_is_named(demo_dir, tmp_path, key):
    pol, roots = _started(demo_dir, tmp_path)
    with open(getattr(roots, key), "a") as f:
        f.write("mallory\n")
    with pytest.raises(TrustRootError) as e:
        trust.at_decision(pol, roots, tmp_path / "run" / "trust-now")
    assert f"the run's copy of trust.{key}" in e.value.one_line() and "changed during the run" in e.value.one_line()


def test_a_removed_run_copy_is_named(demo_dir, tmp_path):
    pol, roots = _started(demo_dir, tmp_path)
    roots.approvers.unlink()
    with pytest.raises(TrustRootError, match="trust.approvers .* changed during the run"):
        trust.recheck(roots)


def test_a_policy_changed_under_the_run_fails_it(demo_dir, tmp_path):
    pol, roots = _started(demo_dir, tmp_path)
    text = demo_dir["policy"].read_text()
    try:
        demo_dir["policy"].write_text(text.replace("quorum = 2", "quorum = 1"))
        with pytest.raises(TrustRootError) as e:
            trust.at_decision(pol, roots, tmp_path / "run" / "trust-now")
        assert "changed during the run" in e.value.one_line() and str(demo_dir["policy"]) in e.value.one_line()
    finally:
        demo_dir["policy"].write_text(text)


def test_a_revocation_since_the_start_is_in_the_roots_in_force(demo_dir, tmp_path):
    """The source's revocation list is read at the decision; the run's copy (from the start) does not have it."""
    text = demo_dir["policy"].read_text()
    revoked = demo_dir["trust"] / "revoked_keys"
    revoked.write_text("")
    try:
        demo_dir["policy"].write_text(
            text.replace(
                'model_signing_public_key = "trust/model_signing.pub"',
                'model_signing_public_key = "trust/model_signing.pub"\nrevoked_keys = "trust/revoked_keys"',
            )
        )
        pol, roots = _started(demo_dir, tmp_path)
        revoked.write_text((demo_dir["keys"] / "alice.pub").read_text())
        now = trust.at_decision(pol, roots, tmp_path / "run" / "trust-now")
        assert now.revoked_keys.read_text() == revoked.read_text() and roots.revoked_keys.read_text() == ""
    finally:
        demo_dir["policy"].write_text(text)
        revoked.unlink()


def test_the_model_directory_is_new_and_holds_only_the_trainers_two_files(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    (out / "extra.pkl").write_bytes(b"\x80\x04")
    (out / "sub").mkdir()
    model = modeldir.assemble(out, tmp_path / "model")
    assert sorted(p.name for p in model.iterdir()) == ["model.safetensors", "training.json"]
    with pytest.raises(ModelDirError, match="already exists"):
        modeldir.assemble(out, tmp_path / "model")  # never reused: nothing planted before is carried in


def test_a_link_in_the_trainer_output_is_not_followed(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    (out / "training.json").unlink()
    os.symlink("/etc/passwd", out / "training.json")
    with pytest.raises(ModelDirError) as e:
        modeldir.assemble(out, tmp_path / "model")
    assert "training.json is not a regular file" in e.value.one_line() and "no links" in e.value.one_line()
    (out / "training.json").unlink()
    os.mkfifo(out / "training.json")  # a FIFO would block a reader forever
    with pytest.raises(ModelDirError, match="is not a regular file"):
        modeldir.assemble(out, tmp_path / "model2")


def test_layout_names_every_unexpected_entry(trained, tmp_path):
    model = modeldir.assemble(trained, tmp_path / "model")
    assert modeldir.unexpected(model) == []
    modeldir.add_evidence(model, [])
    (model / "evidence" / "commit.json").write_text("{}")
    (model / "evidence" / "x.py").write_text("")
    (model / "loader.py").write_text("")
    os.symlink("model.safetensors", model / "aibom.cdx.json")
    assert modeldir.unexpected(model) == ["aibom.cdx.json", "evidence/x.py", "loader.py"]


# -- the policy from a protected ref ---------------------------------------------------------------------------------


def _protected_layout(tmp_path):
    """A demo whose trust files and deciding policy sections live in the training repository's protected `main`."""
    import subprocess

    from airlock.gitutil import isolated_env

    d = demo.build(tmp_path / "demo")
    repo = d["repo"]
    (repo / "trust").mkdir()
    for f in ("allowed_signers", "approvers", "model_signing.pub"):
        shutil.copy2(d["trust"] / f, repo / "trust" / f)
    (repo / "airlock").mkdir()
    (repo / "airlock" / "policy.toml").write_text("[approval]\nquorum = 3\n\n[evaluation]\nmin_test_accuracy = 0.95\n")
    demo.signed_commit(repo, d["keys"] / "committer", demo.COMMITTER, "trust roots and policy, reviewed")
    local = tmp_path / "demo" / "airlock.toml"
    local.write_text("""[repo]
path = "repo"
[trust]
ref = "main"
policy = "airlock/policy.toml"
allowed_signers = "trust/allowed_signers"
approvers = "trust/approvers"
model_signing_public_key = "trust/model_signing.pub"
[data.train]
dir = "data/train"
manifest = "manifests/train.json"
[data.golden]
dir = "data/golden"
manifest = "manifests/golden.json"
[registry]
path = "registry"
[ledger]
path = "ledger.jsonl"
""")
    env = isolated_env()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], env=env, check=True, capture_output=True)  # noqa: E731
    return d, local, git


def test_the_deciding_sections_come_from_the_protected_ref_not_the_branch_under_test(tmp_path):
    d, local, git = _protected_layout(tmp_path)
    pol = policy.load(local)
    assert pol.approval.quorum == 3 and pol.evaluation.min_test_accuracy == 0.95
    assert pol.protected.startswith("main@") and pol.protected.endswith(":airlock/policy.toml")
    # A feature branch lowers the quorum in its own copy: the protected ref's copy is the one read.
    git("checkout", "-q", "-b", "feature")
    (d["repo"] / "airlock" / "policy.toml").write_text("[approval]\nquorum = 1\n")
    demo.signed_commit(d["repo"], d["keys"] / "committer", demo.COMMITTER, "lower the quorum")
    again = policy.load(local)
    assert again.approval.quorum == 3 and again.digest == pol.digest


def test_a_deciding_section_in_the_local_file_is_refused(tmp_path):
    d, local, _ = _protected_layout(tmp_path)
    local.write_text(local.read_text() + "[approval]\nquorum = 1\n")
    with pytest.raises(policy.PolicyError) as e:
        policy.load(local)
    assert "[approval] is decided by the protected policy main:airlock/policy.toml" in e.value.one_line()


def test_the_protected_policy_holds_only_deciding_sections(tmp_path):
    d, local, _ = _protected_layout(tmp_path)
    (d["repo"] / "airlock" / "policy.toml").write_text('[registry]\npath = "/tmp/attacker-registry"\n')
    demo.signed_commit(d["repo"], d["keys"] / "committer", demo.COMMITTER, "move the registry")
    with pytest.raises(policy.PolicyError, match=r"holds \[registry\], which belongs in the local airlock.toml"):
        policy.load(local)


def test_a_protected_policy_changed_during_the_run_fails_it(tmp_path):
    d, local, _ = _protected_layout(tmp_path)
    pol = policy.load(local)
    roots = trust.resolve(pol, tmp_path / "run" / "trust")
    trust.at_decision(pol, roots, tmp_path / "run" / "trust-now")  # unchanged: passes
    (d["repo"] / "airlock" / "policy.toml").write_text("[approval]\nquorum = 2\n")
    demo.signed_commit(d["repo"], d["keys"] / "committer", demo.COMMITTER, "merged: quorum 2")
    with pytest.raises(TrustRootError) as e:
        trust.at_decision(pol, roots, tmp_path / "run" / "trust-now")
    assert "the protected policy main@" in e.value.one_line() and "(now main@" in e.value.one_line()
    assert "changed during the run" in e.value.one_line()
