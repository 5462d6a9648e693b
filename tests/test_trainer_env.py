"""The trainer's environment from a lock with hashes (airlock/trainer_env.py, gates/environment.py): real pip, real
venvs and a real bubblewrap sandbox; the package index is a directory of wheels built here (PIP_FIND_LINKS), so a
swapped wheel is a real swapped wheel."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from airlock import trainer_env
from airlock.sandbox import Sandbox
from gates import environment


def wheel(index: Path, name: str, version: str, body: str) -> Path:
    """A pure-Python wheel of one module ``name`` (what pip-compile would lock), written into ``index``."""
    index.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: airlock-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def record_line(path: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{path},sha256={digest},{len(data)}"

    record = "\n".join(record_line(p, d) for p, d in files.items()) + f"\n{dist}/RECORD,,\n"
    path = index / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}/RECORD", record)
    return path


def lock_for(*wheels: Path) -> str:
    out = []
    for w in wheels:
        name, version = w.name.split("-")[:2]
        out.append(f"{name}=={version} \\\n    --hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}\n")
    return "# locked by the test\n" + "".join(out)


@pytest.fixture
def index(tmp_path, monkeypatch):
    """Only this directory is the package index for pip (no network, no machine-wide mirror)."""
    d = tmp_path / "index"
    d.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(d))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    return d


def test_the_locked_environment_is_built_once_and_team_code_imports_only_what_it_locks(index, tmp_path):
    w = wheel(index, "tinydep", "1.0", "ANSWER = 42\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.lock").write_text(lock_for(w))
    cache = tmp_path / "envs"
    said: list[str] = []
    env = trainer_env.prepare(src / "requirements.lock", "requirements.lock", cache, said.append)
    assert any("hashes required" in s for s in said)
    d = env.describe()
    assert d["lock_digest"] == "sha256:" + hashlib.sha256((src / "requirements.lock").read_bytes()).hexdigest()
    assert d["packages"] == [
        {
            "name": "tinydep",
            "version": "1.0",
            "sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
            "wheel": w.name,
            "allowed_sha256": [hashlib.sha256(w.read_bytes()).hexdigest()],
        }
    ]
    # The second run reuses it (no pip: the index may be gone) after checking its tree again.
    w.unlink()
    said.clear()
    again = trainer_env.prepare(src / "requirements.lock", "requirements.lock", cache, said.append)
    assert again.tree_digest == env.tree_digest and said == []
    # In the sandbox the locked package imports and Airlock's own (prefect, pydantic...) do not.
    out = tmp_path / "out"
    out.mkdir()
    lines: list[str] = []
    Sandbox(env=str(env.root)).job("probe", rw={"out": out}).run(
        [
            "{python}",
            "-c",
            "import tinydep, importlib.util as u; print(tinydep.ANSWER, [m for m in ('prefect', 'pydantic', "
            "'airlock', 'model_signing') if u.find_spec(m)])",
        ],
        on_line=lines.append,
    )
    assert lines == ["42 []"]


def test_a_wheel_swapped_on_the_index_fails_the_install_naming_the_package(index, tmp_path):
    good = wheel(index, "tinydep", "1.0", "ANSWER = 42\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.lock").write_text(lock_for(good))
    wheel(index, "tinydep", "1.0", "import os\nANSWER = os.system('id')\n")  # same name and version, other bytes
    result = environment.check("requirements.lock", src, tmp_path / "envs")
    assert not result.passed and result.code == "environment.hash_mismatch"
    assert "tinydep==1.0 does not match the lock: the wheel tinydep-1.0-py3-none-any.whl has sha256" in result.reason
    assert not list((tmp_path / "envs").glob("[0-9a-f]*"))  # nothing half-built is left to be reused


def test_an_environment_changed_after_it_was_built_is_refused(index, tmp_path):
    w = wheel(index, "tinydep", "1.0", "ANSWER = 42\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.lock").write_text(lock_for(w))
    env = trainer_env.prepare(src / "requirements.lock", "requirements.lock", tmp_path / "envs")
    module = next(env.root.glob("lib/python*/site-packages/tinydep.py"))
    module.chmod(0o644)
    module.write_text("ANSWER = 41\n")
    result = environment.check("requirements.lock", src, tmp_path / "envs")
    assert not result.passed and result.code == "environment.changed"
    assert "changed since it was built from requirements.lock" in result.reason


@pytest.mark.parametrize(
    ("lock", "reason"),
    [
        (
            "--index-url https://evil.example/simple\ntinydep==1.0 --hash=sha256:" + "0" * 64,
            "is not a pinned requirement",
        ),
        ("-e git+https://evil.example/x.git#egg=x", "is not a pinned requirement"),
        ("tinydep>=1.0 --hash=sha256:" + "0" * 64, "is not a pinned requirement"),
        ("tinydep==1.0", "has no --hash"),
        ("tinydep==1.0 --hash=md5:" + "0" * 32, "only --hash=sha256"),
        ("tinydep==1.0 --hash=sha256:" + "0" * 64 + " --trusted-host evil.example", "only --hash=sha256"),
        ("tinydep @ https://evil.example/tinydep-1.0.whl", "is not a pinned requirement"),
        ("tinydep==1.0 ; python_version > '3' --hash=sha256:" + "0" * 64, "only --hash=sha256"),
        ("a==1 --hash=sha256:" + "0" * 64 + "\nA==2 --hash=sha256:" + "1" * 64, "is locked twice"),
        ("# nothing locked\n", "locks no package"),
    ],
)
def test_a_lock_may_not_choose_where_packages_come_from(lock, reason, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.lock").write_text(lock + "\n")
    result = environment.check("requirements.lock", src, tmp_path / "envs")
    assert not result.passed and result.code == "environment.bad_lock" and reason in result.reason, result.reason


def test_no_lock_in_the_commit_is_a_refusal_and_no_lock_in_the_policy_is_recorded_as_unpinned(tmp_path):
    result = environment.check("requirements.lock", tmp_path, tmp_path / "envs")
    assert not result.passed and result.code == "environment.no_lock"
    unpinned = environment.check(None, tmp_path, tmp_path / "envs")
    assert unpinned.passed and unpinned.code == "environment.unpinned" and unpinned.evidence == {"lock": None}


def test_the_example_trainers_lock_parses_and_pins_what_the_oracle_imports():
    root = Path(__file__).resolve().parents[1]
    names = {p.name for p in trainer_env.parse((root / "training" / "requirements.lock").read_text())}
    assert {"torch", "numpy", "safetensors"} <= names


def test_a_lock_path_outside_the_repository_is_refused_in_the_policy(tmp_path):
    from airlock import policy
    from airlock.errors import PolicyError

    for bad in ("../outside.lock", "/etc/passwd", "training/../../x.lock", "./requirements.lock"):
        p = tmp_path / "airlock.toml"
        p.write_text(
            f'[repo]\npath = "{tmp_path}"\n[trust]\nallowed_signers = "a"\napprovers = "b"\n'
            f'model_signing_public_key = "c"\n[training]\nlock = "{bad}"\n[data.train]\ndir = "x"\nmanifest = "x.json"\n'
            f'[data.golden]\ndir = "y"\nmanifest = "y.json"\n[registry]\npath = "r"\n[ledger]\npath = "l"\n'
        )
        with pytest.raises(PolicyError, match="training.lock"):
            policy.load(p)
    assert json.dumps(bad)  # the last one was refused too
