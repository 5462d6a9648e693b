"""Commit gate: each attack it exists for is refused, with real git, real SSH and real GPG signatures."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from airlock import policy as _policy
from airlock import trust
from airlock.errors import TrustRootError
from airlock.gitutil import isolated_env
from gates import Verdict, commit
from gates.commit import SignerPolicy
from tests import gpgkeys
from tests.conftest import commit as make_commit
from tests.conftest import git


def change(repo: Path, text: str) -> None:
    (repo / "training" / "model.py").write_text(f"# {text}\n")


# -- HEAD, SSH ---------------------------------------------------------------------------------------------------


def test_signed_clean_history_passes(repo, keys):
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.evidence["signer"] == "dev@example.com"
    assert r.evidence["key_fingerprint"].startswith("SHA256:")
    assert len(r.evidence["commit"]) == 40 and r.metrics["commits_checked"] == 1


def test_unsigned_head_is_refused(repo, keys):
    change(repo, "unsigned")
    sha = make_commit(repo, "unsigned change", key=None)
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert f'commit {sha[:12]} (2 of 2 since the root, "unsigned change") is not signed' in r.reason
    assert r.code == "commit.unsigned", r.code


def test_head_signed_by_unknown_key_is_refused(repo, keys):
    change(repo, "attacker")
    make_commit(repo, "looks legit", key=keys.key("evil"))
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "is signed by a key that is not trusted" in r.reason
    assert r.code == "commit.untrusted_key", r.code


def test_repo_local_fake_signature_program_is_ignored(repo, keys, tmp_path):
    """A repo-local gpg.ssh.program that prints 'Good signature' cannot make an attacker's commit pass."""
    change(repo, "attacker")
    make_commit(repo, "attacker", key=keys.key("evil"))
    fake = tmp_path / "fake-ssh-keygen"
    fake.write_text("#!/bin/sh\necho 'Good \"git\" signature for dev@example.com with ED25519 key SHA256:x'\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    git(repo, "config", "gpg.ssh.program", str(fake))
    git(repo, "config", "gpg.format", "ssh")
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not trusted" in r.reason
    assert r.code == "commit.untrusted_key", r.code


def test_repo_local_allowed_signers_file_is_ignored(repo, keys, tmp_path):
    """A repo-local gpg.ssh.allowedSignersFile listing the attacker's key does not make it trusted."""
    change(repo, "attacker")
    make_commit(repo, "attacker", key=keys.key("evil"))
    own = tmp_path / "attacker_signers"
    evil_pub = " ".join(open(f"{keys.key('evil')}.pub").read().split()[:2])
    own.write_text(f'dev@example.com namespaces="git" {evil_pub}\n')
    git(repo, "config", "gpg.ssh.allowedSignersFile", str(own))
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not trusted" in r.reason
    assert r.code == "commit.untrusted_key", r.code


def test_modified_tracked_file_is_refused(repo, keys):
    (repo / "training" / "config.toml").write_text("epochs = 1\n")
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "not clean" in r.reason and "training/config.toml" in r.reason
    assert r.code == "commit.dirty_tree", r.code


def test_untracked_file_is_refused(repo, keys):
    (repo / "training" / "extra.py").write_text("import os\n")
    r = commit.check(repo, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "training/extra.py" in r.reason
    assert r.code == "commit.dirty_tree", r.code


def test_not_a_repository_is_refused(tmp_path, keys):
    r = commit.check(tmp_path, keys.allowed_signers)
    assert r.verdict is Verdict.FAIL
    assert "git" in r.reason


def test_empty_allowed_signers_is_refused(repo, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    r = commit.check(repo, empty)
    assert r.verdict is Verdict.FAIL
    assert "list no key" in r.reason
    assert r.code == "commit.no_signers", r.code


# -- history ------------------------------------------------------------------------------------------------------


def test_unsigned_commit_in_the_middle_of_the_range_is_refused(repo, keys):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    change(repo, "one")
    make_commit(repo, "trusted one", key=keys.key("dev"))
    change(repo, "sneaky")
    bad = make_commit(repo, "sneaky unsigned", key=None)
    change(repo, "two")
    make_commit(repo, "trusted two on top", key=keys.key("dev"))
    r = commit.check(repo, keys.allowed_signers, base=base)
    assert r.verdict is Verdict.FAIL
    assert f'commit {bad[:12]} (2 of 3 since base {base[:12]}, "sneaky unsigned") is not signed' in r.reason
    assert r.code == "commit.unsigned", r.code
    assert r.evidence["refused"]["commit"] == bad


def test_foreign_signed_commit_in_the_middle_is_refused(repo, keys):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    change(repo, "evil")
    bad = make_commit(repo, "helpful refactor", key=keys.key("evil"))
    change(repo, "ok")
    make_commit(repo, "trusted on top", key=keys.key("dev"))
    r = commit.check(repo, keys.allowed_signers, base=base)
    assert r.verdict is Verdict.FAIL
    assert f"commit {bad[:12]} (1 of 2" in r.reason and "not trusted" in r.reason


def test_history_before_the_base_is_not_judged_again(repo, keys):
    change(repo, "old unsigned")
    old = make_commit(repo, "old unsigned, before production", key=None)
    change(repo, "new")
    make_commit(repo, "new signed", key=keys.key("dev"))
    assert commit.check(repo, keys.allowed_signers).verdict is Verdict.FAIL  # from the root: refused
    r = commit.check(repo, keys.allowed_signers, base=old)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.metrics["commits_checked"] == 1


def test_retrain_without_new_commits_checks_head_again(repo, keys):
    """A scheduled retrain on new data (HEAD is production's commit) passes, and HEAD is still judged."""
    head = git(repo, "rev-parse", "HEAD").stdout.strip()
    r = commit.check(repo, keys.allowed_signers, base=head)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.metrics["commits_checked"] == 1
    change(repo, "unsigned")
    unsigned = make_commit(repo, "unsigned", key=None)
    r = commit.check(repo, keys.allowed_signers, base=unsigned)
    assert r.verdict is Verdict.FAIL and "is not signed" in r.reason
    assert r.code == "commit.unsigned", r.code


def test_rewritten_history_is_refused(repo, keys):
    change(repo, "production's")
    production = make_commit(repo, "trained into production", key=keys.key("dev"))
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    change(repo, "rewritten")
    make_commit(repo, "rewritten", key=keys.key("dev"))
    r = commit.check(repo, keys.allowed_signers, base=production)
    assert r.verdict is Verdict.FAIL
    assert "is not an ancestor of HEAD" in r.reason
    assert r.code == "commit.history_rewritten", r.code


def test_revoked_ssh_key_is_refused(repo, keys, tmp_path):
    revoked = tmp_path / "revoked_keys"
    revoked.write_text(open(f"{keys.key('dev')}.pub").read())
    r = commit.check(repo, SignerPolicy(keys.allowed_signers, revoked_keys=revoked))
    assert r.verdict is Verdict.FAIL
    assert "is signed by a revoked key" in r.reason
    assert r.code == "commit.revoked_key", r.code


# -- GPG ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gk(tmp_path_factory):
    # gpg-agent's socket path must stay short: use a short temporary directory.
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="gk-"))
    k = gpgkeys.make(root)
    yield k
    k.close()


def gpg_commit(repo: Path, gk, who: str, message: str, program: str = "gpg") -> str:
    change(repo, message)
    env = {**isolated_env(gk.signer_home)}
    git(repo, "add", "-A")
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.com",
            "-c",
            "gpg.format=openpgp",
            "-c",
            f"gpg.program={program}",
            "-c",
            f"user.signingkey={gk.fpr[who]}",
            "-C",
            str(repo),
            "commit",
            "-q",
            "-S",
            "-m",
            message,
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def gpg_policy(keys, gk, *allowed: str) -> SignerPolicy:
    return SignerPolicy(
        keys.allowed_signers, gpg_home=gk.verify_home, gpg_fingerprints=frozenset(gk.fpr[a] for a in allowed)
    )


def test_trusted_allow_listed_gpg_commit_passes(repo, keys, gk):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    gpg_commit(repo, gk, "good", "gpg signed")
    r = commit.check(repo, gpg_policy(keys, gk, "good"), base=base)
    assert r.verdict is Verdict.PASS, r.reason


def test_imported_but_untrusted_gpg_key_is_refused(repo, keys, gk):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    sha = gpg_commit(repo, gk, "untrusted", "untrusted")
    # git verify-commit exits 0 for such a key unless gpg.minTrustLevel is pinned.
    plain = subprocess.run(
        ["git", "-C", str(repo), "verify-commit", sha], env=isolated_env(gk.verify_home), capture_output=True
    )
    assert plain.returncode == 0
    r = commit.check(repo, gpg_policy(keys, gk, "good", "untrusted"), base=base)
    assert r.verdict is Verdict.FAIL
    assert "not trusted" in r.reason
    assert r.code == "commit.untrusted_key", r.code


def test_trusted_gpg_key_not_on_the_allow_list_is_refused(repo, keys, gk):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    gpg_commit(repo, gk, "forge", "trusted in the keyring only")
    r = commit.check(repo, gpg_policy(keys, gk, "good"), base=base)
    assert r.verdict is Verdict.FAIL
    assert "not on trust.gpg_fingerprints" in r.reason
    assert r.code == "commit.gpg_not_allowed", r.code


def test_expired_gpg_key_is_refused(repo, keys, gk):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    gpg_commit(repo, gk, "expired", "signed in 2020", program=str(gk.faketime_gpg))
    r = commit.check(repo, gpg_policy(keys, gk, "good", "expired"), base=base)
    assert r.verdict is Verdict.FAIL
    assert "expired key" in r.reason
    assert r.code == "commit.expired_key", r.code


def test_revoked_gpg_key_is_refused(repo, keys, gk):
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    gpg_commit(repo, gk, "revoked", "revoked since")
    r = commit.check(repo, gpg_policy(keys, gk, "good", "revoked"), base=base)
    assert r.verdict is Verdict.FAIL
    assert "revoked key" in r.reason
    assert r.code == "commit.revoked_key", r.code


def test_forge_merge_commit_needs_its_key_on_the_allow_list(repo, keys, gk):
    """A merge made by a forge (GitHub's web-flow key) passes only if that key is explicitly allowed."""
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    git(repo, "checkout", "-q", "-b", "feature")
    change(repo, "feature work")
    make_commit(repo, "feature work", key=keys.key("dev"))
    git(repo, "checkout", "-q", "main")
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=GitHub",
            "-c",
            "user.email=noreply@github.com",
            "-c",
            "gpg.format=openpgp",
            "-c",
            f"user.signingkey={gk.fpr['forge']}",
            "-C",
            str(repo),
            "merge",
            "-q",
            "--no-ff",
            "-S",
            "-m",
            "Merge pull request #1",
            "feature",
        ],
        env=isolated_env(gk.signer_home),
        check=True,
        capture_output=True,
    )
    refused = commit.check(repo, gpg_policy(keys, gk, "good"), base=base)
    assert refused.verdict is Verdict.FAIL
    assert "Merge pull request #1" in refused.reason and "not on trust.gpg_fingerprints" in refused.reason
    allowed = commit.check(repo, gpg_policy(keys, gk, "good", "forge"), base=base)
    assert allowed.verdict is Verdict.PASS, allowed.reason
    assert allowed.metrics["commits_checked"] == 2


def test_gpg_signature_without_a_configured_keyring_is_refused(repo, keys, gk):
    """The user's own ~/.gnupg is never a trust root: without trust.gpg_home, a GPG signature cannot be checked."""
    base = git(repo, "rev-parse", "HEAD").stdout.strip()
    gpg_commit(repo, gk, "good", "gpg signed")
    os.environ["GNUPGHOME"] = str(gk.verify_home)
    try:
        r = commit.check(repo, keys.allowed_signers, base=base)
    finally:
        del os.environ["GNUPGHOME"]
    assert r.verdict is Verdict.FAIL
    assert "cannot be checked" in r.reason
    assert r.code == "commit.unknown_key", r.code


# -- protected trust roots -----------------------------------------------------------------------------------------


def write_policy(tmp_path: Path, repo: Path, trust_section: str) -> Path:
    p = tmp_path / "airlock.toml"
    p.write_text(f"""
[repo]
path = "{repo}"
[trust]
{trust_section}
[data.train]
dir = "d"
manifest = "manifests/train.json"
[data.golden]
dir = "g"
manifest = "manifests/golden.json"
[registry]
path = "reg"
[ledger]
path = "l.jsonl"
""")
    return p


def test_commit_adding_its_own_signer_is_not_trusted_with_a_protected_ref(repo, keys, tmp_path):
    # main (protected) holds the trust files; a feature branch adds the attacker's key to them and signs with it.
    (repo / "trust").mkdir()
    (repo / "trust" / "allowed_signers").write_text(keys.allowed_signers.read_text())
    (repo / "trust" / "approvers").write_text(keys.approvers.read_text())
    (repo / "trust" / "model_signing.pub").write_bytes(keys.model_pub.read_bytes())
    make_commit(repo, "trust roots on main", key=keys.key("dev"))
    git(repo, "checkout", "-q", "-b", "feature")
    evil_pub = " ".join(open(f"{keys.key('evil')}.pub").read().split()[:2])
    with open(repo / "trust" / "allowed_signers", "a") as f:
        f.write(f'evil@example.com namespaces="git" {evil_pub}\n')
    make_commit(repo, "add myself as a signer", key=keys.key("evil"))

    def gate(ref: str):
        pol = _policy.load(
            write_policy(
                tmp_path,
                repo,
                f'ref = "{ref}"\nallowed_signers = "trust/allowed_signers"\n'
                'approvers = "trust/approvers"\n'
                'model_signing_public_key = "trust/model_signing.pub"',
            )
        )
        pinned = trust.pin(pol, trust.resolve(pol, tmp_path / f"trust-{ref}"))
        return commit.check(repo, commit.SignerPolicy.from_policy(pinned))

    refused = gate("main")
    assert refused.verdict is Verdict.FAIL
    assert "add myself as a signer" in refused.reason and "not trusted" in refused.reason
    # Read from the commit under test instead, the attacker would have vouched for itself:
    assert gate("feature").verdict is Verdict.PASS


def test_trust_files_inside_the_repo_are_refused(repo, keys, tmp_path):
    inside = repo / "allowed_signers"
    inside.write_text(keys.allowed_signers.read_text())
    pol = _policy.load(
        write_policy(
            tmp_path,
            repo,
            f'allowed_signers = "{inside}"\napprovers = "{keys.approvers}"\n'
            f'model_signing_public_key = "{keys.model_pub}"',
        )
    )
    with pytest.raises(TrustRootError, match="trust.allowed_signers .* lies inside the repository under test"):
        trust.resolve(pol, tmp_path / "t")


def test_policy_inside_the_repo_is_refused(repo, keys, tmp_path):
    p = write_policy(
        repo,
        repo,
        f'allowed_signers = "{keys.allowed_signers}"\napprovers = "{keys.approvers}"\n'
        f'model_signing_public_key = "{keys.model_pub}"',
    )
    with pytest.raises(TrustRootError, match="policy .* lies inside the repository under test"):
        trust.resolve(_policy.load(p), tmp_path / "t")


def test_missing_protected_ref_is_refused(repo, keys, tmp_path):
    pol = _policy.load(
        write_policy(
            tmp_path,
            repo,
            'ref = "origin/main"\nallowed_signers = "a"\napprovers = "b"\nmodel_signing_public_key = "c"',
        )
    )
    with pytest.raises(TrustRootError, match="does not name a commit"):
        trust.resolve(pol, tmp_path / "t")
