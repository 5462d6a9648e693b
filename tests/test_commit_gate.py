"""Commit gate: each attack it exists for is refused, with real git and real SSH signatures."""

from __future__ import annotations

import stat

from gates import Verdict, commit
from tests.conftest import commit as make_commit
from tests.conftest import git


def test_signed_clean_head_passes(repo, keys):
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.evidence["signer"] == "dev@example.com"
    assert r.evidence["key_fingerprint"].startswith("SHA256:")
    assert len(r.evidence["commit"]) == 40


def test_unsigned_head_is_refused(repo, keys):
    (repo / "training" / "model.py").write_text("# changed\n")
    sha = make_commit(repo, "unsigned change", key=None)
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert f"HEAD {sha[:12]} is not signed" in r.reason


def test_head_signed_by_unknown_key_is_refused(repo, keys):
    (repo / "training" / "model.py").write_text("# attacker\n")
    make_commit(repo, "looks legit", key=keys.key("evil"))
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not in the allowed signers" in r.reason


def test_repo_local_fake_signature_program_is_ignored(repo, keys, tmp_path):
    """A repo-local gpg.ssh.program that prints 'Good signature' cannot make an attacker's commit pass."""
    (repo / "training" / "model.py").write_text("# attacker\n")
    make_commit(repo, "attacker", key=keys.key("evil"))
    fake = tmp_path / "fake-ssh-keygen"
    fake.write_text('#!/bin/sh\necho \'Good "git" signature for dev@example.com with ED25519 key SHA256:x\'\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    git(repo, "config", "gpg.ssh.program", str(fake))
    git(repo, "config", "gpg.format", "ssh")
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not in the allowed signers" in r.reason


def test_repo_local_allowed_signers_file_is_ignored(repo, keys, tmp_path):
    """A repo-local gpg.ssh.allowedSignersFile listing the attacker's key does not make it trusted."""
    (repo / "training" / "model.py").write_text("# attacker\n")
    make_commit(repo, "attacker", key=keys.key("evil"))
    own = tmp_path / "attacker_signers"
    evil_pub = " ".join(open(f"{keys.key('evil')}.pub").read().split()[:2])
    own.write_text(f'dev@example.com namespaces="git" {evil_pub}\n')
    git(repo, "config", "gpg.ssh.allowedSignersFile", str(own))
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not in the allowed signers" in r.reason


def test_modified_tracked_file_is_refused(repo, keys):
    (repo / "training" / "config.toml").write_text("epochs = 1\n")
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not clean" in r.reason and "training/config.toml" in r.reason


def test_untracked_file_is_refused(repo, keys):
    (repo / "training" / "extra.py").write_text("import os\n")
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "training/extra.py" in r.reason


def test_allowed_signers_inside_the_repo_is_refused(repo, keys):
    """A commit cannot vouch for itself: a trust file inside the repository under test is refused."""
    inside = repo / "allowed_signers"
    inside.write_text(keys.allowed_signers.read_text())
    make_commit(repo, "add own signers", key=keys.key("dev"))
    r = commit.check(repo, inside)
    assert r.verdict is Verdict.FAIL
    assert "inside the repository under test" in r.reason


def test_not_a_repository_is_refused(tmp_path, keys):
    r = commit.check(tmp_path, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "git" in r.reason


def test_empty_allowed_signers_is_refused(repo, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    r = commit.check(repo, empty)
    assert r.verdict is Verdict.FAIL
    assert "lists no key" in r.reason
