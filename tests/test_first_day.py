"""docs/first-day.md, followed literally: its bash blocks run in order, in one shell, on a fresh home directory;
production verifies at the end. A step the page gets wrong fails here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from airlock.trainer_env import default_cache
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_first_day_page_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "first-day.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 6, "the page lost a step"
    airlock = shutil.which("airlock")
    assert airlock, "the airlock command is not on PATH: run ./setup.sh"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "AIRLOCK_"))}
    # The trainer's locked environment ./setup.sh built stays where it is (a new HOME would build it again).
    env.update(
        {"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), "XDG_CACHE_HOME": str(default_cache().parents[1])}
    )
    script = "set -euo pipefail\n" + "\n".join(blocks)
    res = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "production model sha256:" in res.stdout and "verified" in res.stdout, res.stdout[-2000:]
    assert (home / "airlock" / "keys" / "model_signing.key").stat().st_mode & 0o077 == 0
    assert "weights   sha256:" in res.stdout and "dataset   train: sha256:" in res.stdout  # airlock bom
    assert "identical: the rebuilt weights are the signed ones" in res.stdout  # airlock rebuild

    # A rebuild on data that is not what the run trained on proves nothing: refused, naming why.
    [record] = (home / "airlock" / "registry" / "staging" / "runs").glob("*.json")
    run_id = record.stem
    (home / "data" / "train" / "train_y.npy").write_bytes(b"not the data")
    again = subprocess.run(
        [airlock, "rebuild", run_id, "--config", str(home / "airlock" / "airlock.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "is not what run" in again.stderr, again.stderr
