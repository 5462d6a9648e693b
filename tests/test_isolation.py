"""Training never sees signing keys or tokens: the child's environment is an allowlist."""

from __future__ import annotations

import json

import pytest

from airlock import isolation

SECRETS = {
    "AIRLOCK_SIGNING_KEY": "/keys/model.key",
    "SSH_AUTH_SOCK": "/tmp/agent.sock",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "gh-oidc",
    "ACTIONS_ID_TOKEN_REQUEST_URL": "https://example/token",
    "GITHUB_TOKEN": "ghs_x",
    "PREFECT_API_KEY": "pnu_x",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "SIGSTORE_ID_TOKEN": "jwt",
    "SOME_NEW_TOKEN_NOBODY_LISTED": "x",
}


def test_trainer_environment_carries_no_secrets(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    isolation.run(["{python}", "-c", script], cwd=tmp_path, home=tmp_path / "home", timeout=60, what="trainer")
    env = json.loads(out.read_text())
    assert not set(SECRETS) & set(env), set(SECRETS) & set(env)
    assert env["HOME"] == str(tmp_path / "home")          # not the user's home with ~/.ssh
    assert env["OMP_NUM_THREADS"] == "1"


def test_failing_trainer_is_a_refusal_with_its_last_line(tmp_path):
    with pytest.raises(isolation.IsolatedRunError, match="exited with code 3: boom"):
        isolation.run(["{python}", "-c", "import sys; print('boom'); sys.exit(3)"], cwd=tmp_path,
                      home=tmp_path / "h", timeout=60, what="trainer")


def test_runaway_trainer_is_stopped(tmp_path):
    with pytest.raises(isolation.IsolatedRunError, match="longer than 1 s"):
        isolation.run(["{python}", "-c", "import time\nwhile True: print('x', flush=True); time.sleep(0.2)"],
                      cwd=tmp_path, home=tmp_path / "h", timeout=1, what="trainer")


def test_silent_hanging_trainer_is_stopped(tmp_path):
    with pytest.raises(isolation.IsolatedRunError, match="longer than 1 s"):
        isolation.run(["{python}", "-c", "import time; time.sleep(60)"], cwd=tmp_path, home=tmp_path / "h",
                      timeout=1, what="trainer")
