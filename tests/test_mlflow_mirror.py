"""The MLflow mirror (registry/mlflow_mirror.py) against a real `mlflow server` on 127.0.0.1 with a SQLite store:
each verified model a run and a registered version tagged with its digest and signer; the production alias moved
only by promotion; an alias moved or a version edited in MLflow never believed, reported and put back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from airlock.errors import MirrorError
from airlock.ledger import Ledger
from registry import Registry
from registry.mlflow_mirror import Client, Mirror, sync
from tests.conftest import assert_one_line_refusal, run_cli

RUNS = ["0b7e9a52-0000-4000-8000-0000000000a1", "0b7e9a52-0000-4000-8000-0000000000a2"]


def mlflow_binary() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    exe = cache / "airlock" / "mlflow-server" / "bin" / "mlflow"
    if not exe.is_file():  # fail, never skip: ./setup.sh installs it
        pytest.fail(f"no MLflow server at {exe}: run ./setup.sh")
    return exe


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "wb")  # a file, not a pipe nobody reads
    proc = subprocess.Popen(
        [str(mlflow_binary()), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{base}/health", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield base
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


def _models(tmp_path, trained, keys, reg: Registry) -> list[str]:
    from tests.test_affected import _model

    out = []
    for i, run in enumerate(RUNS):
        out.append(reg.stage(*_model(tmp_path, trained, keys, run, {f"b000{i + 1}": "a" * 64}), run).digest)
    return out


def _approve(keys, run, digest):
    from tests.test_affected import _approvals

    return _approvals(keys, run, digest)


def _version(base: str, name: str, version: str) -> dict:
    r = requests.get(f"{base}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version}, timeout=10)
    return r.json()["model_version"]


def _alias(base: str, name: str) -> str | None:
    r = requests.get(
        f"{base}/api/2.0/mlflow/registered-models/alias", params={"name": name, "alias": "production"}, timeout=10
    )
    return r.json()["model_version"]["version"] if r.ok else None


def _tags(v: dict) -> dict:
    return {t["key"]: t["value"] for t in v.get("tags") or []}


def test_each_model_is_a_tagged_version_and_only_promotion_moves_the_production_alias(
    mlflow_server, tmp_path, trained, keys
):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    reg = Registry(tmp_path / "registry", ledger, keys.model_pub, keys.approvers)
    mirror = Mirror(Client(mlflow_server), "airlock-tests", "digits-a")
    a, b = _models(tmp_path, trained, keys, reg)

    # Staged models: a version each, tagged; no alias yet (nothing is in production).
    report = sync(mirror, reg, ledger)
    assert (
        sorted(report.mirrored) == sorted([a, b]) and report.alias is None and _alias(mlflow_server, "digits-a") is None
    )
    versions = {
        d: v
        for d, v in (
            (e["data"]["digest"], e["data"]["version"]) for e in ledger.entries() if e["kind"] == "mlflow.version"
        )
    }
    va = _version(mlflow_server, "digits-a", versions[a])
    assert _tags(va)["airlock.digest"] == a and _tags(va)["airlock.stage"] == "staging"
    assert json.loads(_tags(va)["airlock.signer"]) == (reg.find(a).provenance.get("signer") or {})  # as signed
    assert va["source"] == f"airlock://{reg.root}/staging/{a.removeprefix('sha256:')}"
    # Its run: the gate verdicts, parameters from the signed provenance, the AIBOM as an artifact.
    run = requests.get(f"{mlflow_server}/api/2.0/mlflow/runs/get", params={"run_id": va["run_id"]}, timeout=10).json()[
        "run"
    ]
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    assert params["data.train.root_digest"].startswith("sha256:") and run["info"]["status"] == "FINISHED"
    arts = requests.get(
        f"{mlflow_server}/api/2.0/mlflow/artifacts/list", params={"run_id": va["run_id"]}, timeout=10
    ).json()
    assert {f["path"] for f in arts["files"]} == {"provenance.json", "aibom.cdx.json"}
    assert sync(mirror, reg, ledger).mirrored == []  # idempotent: each model appears once

    # Promotion of a, then a sync: the alias names a's version.
    reg.promote(a, _approve(keys, RUNS[0], a))
    report = sync(mirror, reg, ledger, digests=[a])
    assert report.alias == versions[a] == _alias(mlflow_server, "digits-a") and report.moved_outside is None
    assert _tags(_version(mlflow_server, "digits-a", versions[a]))["airlock.stage"] == "production"

    # Someone moves the alias in MLflow to b (staged, never approved). Airlock believes nothing of it: the check
    # reports it, and the next sync moves it back and records that it had been moved.
    requests.post(
        f"{mlflow_server}/api/2.0/mlflow/registered-models/alias",
        json={"name": "digits-a", "alias": "production", "version": versions[b]},
        timeout=10,
    ).raise_for_status()
    checked = sync(mirror, reg, ledger, check=True)
    assert (
        any("moved outside Airlock" in p for p in checked.problems) and _alias(mlflow_server, "digits-a") == versions[b]
    )
    report = sync(mirror, reg, ledger)
    assert report.moved_outside and report.moved_outside["was"] == versions[b]
    assert _alias(mlflow_server, "digits-a") == versions[a]
    assert [e["data"]["was"] for e in ledger.entries() if e["kind"] == "mlflow.alias.restored"] == [versions[b]]

    # A hand-made version claiming a's digest is not production's version: Airlock uses the one it recorded.
    requests.post(
        f"{mlflow_server}/api/2.0/mlflow/model-versions/create",
        json={"name": "digits-a", "source": "s3://evil/model", "tags": [{"key": "airlock.digest", "value": a}]},
        timeout=10,
    ).raise_for_status()
    requests.post(
        f"{mlflow_server}/api/2.0/mlflow/model-versions/set-tag",
        json={"name": "digits-a", "version": versions[a], "key": "airlock.digest", "value": b},
        timeout=10,
    ).raise_for_status()
    # ... and a's own version edited (its digest tag): not believed; a new version is made for a and aliased.
    report = sync(mirror, reg, ledger)
    new = report.alias
    assert (
        new not in (versions[a], versions[b]) and _tags(_version(mlflow_server, "digits-a", new))["airlock.digest"] == a
    )
    assert (
        _version(mlflow_server, "digits-a", new)["source"]
        == f"airlock://{reg.root}/staging/{a.removeprefix('sha256:')}"
    )

    # Promotion of b: the alias follows, recorded as a move by Airlock, not a restoration.
    reg.promote(b, _approve(keys, RUNS[1], b))
    report = sync(mirror, reg, ledger, digests=[b])
    assert (
        report.moved_outside is None and _tags(_version(mlflow_server, "digits-a", report.alias))["airlock.digest"] == b
    )
    assert [e["data"]["was"] for e in ledger.entries() if e["kind"] == "mlflow.alias.restored"] == [versions[b]]
    assert sync(mirror, reg, ledger, check=True).problems == []


def test_an_unreachable_mirror_is_one_line_and_blocks_nothing(tmp_path, trained, keys):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    reg = Registry(tmp_path / "registry", ledger, keys.model_pub, keys.approvers)
    (a, _) = _models(tmp_path, trained, keys, reg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    with pytest.raises(MirrorError, match="cannot be reached") as e:
        sync(Mirror(Client(f"http://127.0.0.1:{port}"), "x", "m"), reg, ledger)
    assert "\n" not in e.value.one_line()
    reg.promote(a, _approve(keys, RUNS[0], a))  # the registry never asked MLflow anything
    assert reg.verify_stage("production")[0].digest == a


def test_airlock_mlflow_sync_without_a_section_is_a_usage_error(tmp_path):
    from tests.test_signing_modes import _policy

    res = run_cli("mlflow", "sync", "--config", str(_policy(tmp_path, "")))
    assert_one_line_refusal(res, 2, "no [mlflow] section")
