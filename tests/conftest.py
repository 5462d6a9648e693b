"""Shared fixtures: real SSH keys, real git repositories, a real model-signing key. Nothing is mocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from airlock import manifest, modelsign
from airlock.datasets import write_digits
from airlock.gitutil import isolated_env

ROOT = Path(__file__).resolve().parents[1]

# Prefect in tests: quiet, no telemetry, never a user's ~/.prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

# Two workers, one test file each at a time (pyproject: --dist loadfile). The files that take a minute or more go
# first, longest first (measured with --durations), so that no long file starts last and the two workers end
# together; --no-loadscope-reorder keeps this order (xdist's default puts the files with the most tests first).
LONG_FILES = (
    "test_flow.py",
    "test_flow_promotion.py",
    "test_flow_suspend.py",
    "test_first_day.py",
    "test_serve.py",
    "test_demo_e2e.py",
    "test_prefect_ui.py",
    "test_backdoor.py",
    "test_mlflow_mirror.py",
    "test_forking.py",
    "test_demo_server.py",
    "test_robustness.py",
    "test_model_sandbox.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep collection order


@dataclass
class Keys:
    dir: Path
    allowed_signers: Path
    approvers: Path
    model_key: Path
    model_pub: Path

    def key(self, name: str) -> Path:
        return self.dir / name


def ssh_key(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    pubs = {name: ssh_key(d / name, f"{name}@example.com") for name in ("dev", "evil", "alice", "bob", "carol")}
    allowed = d / "allowed_signers"
    allowed.write_text(f'dev@example.com namespaces="git" {pubs["dev"]}\n')
    approvers = d / "approvers"
    approvers.write_text(
        f'alice@example.com namespaces="airlock-approval" {pubs["alice"]} roles=ml-lead\n'
        f'bob@example.com namespaces="airlock-approval" {pubs["bob"]} roles=security\n'
        f'dev@example.com namespaces="airlock-approval" {pubs["dev"]} roles=ml-lead,security\n'
    )
    modelsign.generate_keypair(d / "model.key", d / "model.pub")
    return Keys(d, allowed, approvers, d / "model.key", d / "model.pub")


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=isolated_env(), capture_output=True, text=True, check=check
    )


def commit(repo: Path, message: str, key: Path | None, email: str = "dev@example.com") -> str:
    cfg = ["-c", "user.name=Dev", "-c", f"user.email={email}", "-c", "gpg.format=ssh"]
    if key is not None:
        cfg += ["-c", f"user.signingkey={key}"]
    git(repo, "add", "-A")
    subprocess.run(
        [
            "git",
            *cfg,
            "-C",
            str(repo),
            "commit",
            "-q",
            "--allow-empty",
            "-S" if key is not None else "--no-gpg-sign",
            "-m",
            message,
        ],
        env=isolated_env(),
        check=True,
        capture_output=True,
    )
    return git(repo, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("digits")
    write_digits(d / "train", d / "golden")
    return d


@pytest.fixture
def repo(tmp_path, keys, digits) -> Path:
    """A training repository like a fork's: the example trainer and committed manifests, signed by dev."""
    r = tmp_path / "repo"
    (r / "training").mkdir(parents=True)
    for name in ("__init__.py", "model.py", "train.py", "config.toml"):
        shutil.copy2(ROOT / "training" / name, r / "training" / name)
    for ds in ("train", "golden"):
        manifest.write(r / "manifests" / f"{ds}.json", manifest.build(digits / ds, ds))
    subprocess.run(["git", "init", "-q", "-b", "main", str(r)], check=True, env=isolated_env())
    commit(r, "trainer and manifests", keys.key("dev"))
    return r


@pytest.fixture(scope="session")
def trained(tmp_path_factory, digits) -> Path:
    """The example trainer's output on the digits (real training, ~5 s, once per session)."""
    out = tmp_path_factory.mktemp("trained") / "out"
    subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(digits / "train"), "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return out


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real `airlock` command in a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_line_refusal(res: subprocess.CompletedProcess, expect_code: int, *needles: str) -> None:
    assert res.returncode == expect_code, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert err.startswith("airlock: "), err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


# -- the end-to-end flow tests (tests/test_flow*.py, tests/_flow.py) ---------------------------------------------


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def full_server(tmp_path_factory):
    """A Prefect server on 127.0.0.1 as `prefect server start` serves it (UI and every background service)."""
    from flows._server import Server

    srv = Server(tmp_path_factory.mktemp("prefect-full"), full=True).start()
    try:
        yield srv.wait()
    finally:
        srv.stop()


@pytest.fixture
def work(tmp_path):
    """The demo's work directory, with cheaper model-gate settings (the gates' own tests use calibrated ones)."""
    from flows import demo

    paths = demo.build(tmp_path / "demo")
    text = paths["policy"].read_text()
    for old, new in (
        ("stand_in_models = 5", "stand_in_models = 1\nimages = 100\nsteps = 60"),
        ("ratio_no_production = 0.70", "ratio_no_production = 0.5"),
        (
            "[advisory]               # membership inference, extraction effort, spectral signatures: "
            "reported, never blocking\nenabled = true",
            "[advisory]\nenabled = false",
        ),
        (
            'model_signing_public_key = "trust/model_signing.pub"',
            'model_signing_public_key = "trust/model_signing.pub"\nrevoked_keys = "trust/revoked_keys"',
        ),
    ):
        assert old in text, old
        text = text.replace(old, new)
    paths["policy"].write_text(text)
    (paths["trust"] / "revoked_keys").write_text("")  # revocations take effect at decision time
    return paths


def opened_object(work: dict, stored: Path) -> Path:
    """A stored object of the demo's registry, its model files decrypted into a new directory (the demo encrypts
    its registry at rest with keys/registry.key: registry/atrest.py)."""
    import tempfile

    from registry import atrest

    kek = atrest.kek_from_policy(work["keys"] / "registry.key")
    assert kek is not None
    out = Path(tempfile.mkdtemp(prefix="airlock-test-opened-")) / stored.name
    atrest.Sealer(kek).open_tree(stored / "model", out / "model", f"sha256:{stored.name}")
    return out


def sign_model(model: Path, signature: Path, key) -> None:
    """Sign a model as the flow does: the directory, then its attestations (airlock/attest.py) beside the signature,
    built from the model's provenance (signed in it)."""
    import json

    from airlock import attest
    from airlock.hashing import hash_tree

    modelsign.sign(model, signature, key)
    att = signature.parent / attest.DIR
    if att.exists():
        shutil.rmtree(att)
    provenance = json.loads((model / "provenance.json").read_text()) if (model / "provenance.json").exists() else {}
    attest.write(att, attest.build(hash_tree(model).root_digest, provenance, {}))
    modelsign.sign(att, signature.parent / attest.SIG, key)
