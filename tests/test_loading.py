"""Verified loading (`airlock.load`, `airlock verify --export`): serving code gets weights only after the signature,
digest, approvals, ledger anchor, gate evidence and AIBOM verify, parsed from the bytes that verified."""

from __future__ import annotations

import json
import os

import pytest

import airlock
from airlock import aibom
from airlock.errors import RegistryError
from registry import loading
from tests.conftest import assert_one_line_refusal, run_cli, sign_model
from tests.test_registry import RUN, _policy, approvals_for, reg, signed_model  # noqa: F401 - fixtures


@pytest.fixture
def promoted(reg, signed_model, keys, tmp_path):  # noqa: F811
    staged = reg.stage(*signed_model, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    return staged, _policy(tmp_path, keys, reg.root, reg.ledger.path)


def _resign(model, sig, keys, **provenance_changes):
    """A model signed by the trusted key whose signed content says something the gates or the AIBOM contradict."""
    prov = json.loads((model / "provenance.json").read_text())
    prov.update(provenance_changes)
    (model / "provenance.json").write_text(json.dumps(prov))
    sign_model(model, sig, keys.model_key)


def test_load_returns_the_verified_model_and_its_tensors(promoted):
    staged, cfg = promoted
    model = airlock.load("production", config=cfg)
    assert model.digest == staged.digest and model.approvers == ("alice@example.com", "bob@example.com")
    tensors = model.tensors()
    assert tensors and all(hasattr(t, "shape") for t in tensors.values())
    assert model.metadata["nb_classes"] == 10
    assert set(model.files) == {"model.safetensors", "training.json", "provenance.json", "aibom.cdx.json"}


def test_an_unapproved_model_is_not_loaded(promoted, reg):  # noqa: F811
    staged, cfg = promoted
    path = reg.root / "production" / staged.digest[7:] / "approvals.json"
    record = json.loads(path.read_text())
    record["approvals"] = record["approvals"][:1]  # only the ml-lead: the security role is missing
    path.write_text(json.dumps(record))
    with pytest.raises(RegistryError, match="do not meet the policy in force: .*security"):
        airlock.load("production", config=cfg)


def test_an_unsigned_model_is_not_loaded(promoted, reg):  # noqa: F811
    staged, cfg = promoted
    (reg.root / "production" / staged.digest[7:] / "model.sig").unlink()
    with pytest.raises(RegistryError, match="no signature"):
        airlock.load("production", config=cfg)


def test_a_model_signed_around_a_failed_gate_is_not_loaded(reg, signed_model, keys, tmp_path):  # noqa: F811
    model, sig = signed_model
    _resign(model, sig, keys, gates=[{"gate": "backdoor", "verdict": "fail", "code": "backdoor.trigger_found"}])
    aibom.write(model, json.loads((model / "provenance.json").read_text()), {}, {})
    sign_model(model, sig, keys.model_key)
    staged = reg.stage(model, sig, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    with pytest.raises(RegistryError, match=r"gate backdoor did not pass .*backdoor.trigger_found"):
        airlock.load("production", config=_policy(tmp_path, keys, reg.root, reg.ledger.path))


def test_evidence_that_contradicts_the_provenance_is_refused(reg, signed_model, keys, tmp_path):  # noqa: F811
    model, sig = signed_model
    (model / "evidence").mkdir()
    (model / "evidence" / "artifact.json").write_text(json.dumps({"verdict": "fail", "code": "artifact.pickle"}))
    sign_model(model, sig, keys.model_key)
    staged = reg.stage(model, sig, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    with pytest.raises(RegistryError, match="evidence of gate artifact says fail"):
        airlock.load("production", config=_policy(tmp_path, keys, reg.root, reg.ledger.path))


def test_an_aibom_of_other_weights_is_refused(reg, signed_model, keys, tmp_path):  # noqa: F811
    model, sig = signed_model
    bom = json.loads((model / "aibom.cdx.json").read_text())
    next(c for c in bom["components"] if c["bom-ref"] == "model")["hashes"][0]["content"] = "0" * 64
    (model / "aibom.cdx.json").write_text(json.dumps(bom))
    sign_model(model, sig, keys.model_key)
    staged = reg.stage(model, sig, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    with pytest.raises(RegistryError, match="AIBOM's weights digest is not the weights' digest"):
        airlock.load("production", config=_policy(tmp_path, keys, reg.root, reg.ledger.path))


def test_a_file_swapped_after_verification_is_refused_at_the_read(promoted, reg):  # noqa: F811
    """The bytes handed out are the bytes hashed: a swap between the check and the read changes the digest."""
    staged, _ = promoted
    model_dir = reg.root / "production" / staged.digest[7:] / "model"
    assert loading.read_verified(model_dir, staged.digest)  # as verified: read
    (model_dir / "training.json").write_text(json.dumps({"nb_classes": 10, "swapped": True}))
    with pytest.raises(RegistryError, match="changed between its verification and its read"):
        loading.read_verified(model_dir, staged.digest)
    os.remove(model_dir / "training.json")
    os.symlink("/etc/passwd", model_dir / "training.json")
    with pytest.raises(RegistryError, match="not a regular file"):
        loading.read_verified(model_dir, staged.digest)


def test_verify_export_writes_the_verified_files_read_only(promoted, tmp_path):
    staged, cfg = promoted
    dest = tmp_path / "models" / "current"
    res = run_cli("verify", "--config", str(cfg), "--export", str(dest))
    assert res.returncode == 0, res.stderr
    assert f"exported the verified files to {dest}" in res.stdout
    model = airlock.load("production", config=cfg)
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()} == dict(model.files)
    assert all((p.stat().st_mode & 0o222) == 0 for p in dest.iterdir())
    again = run_cli("verify", "--config", str(cfg), "--export", str(dest))
    assert_one_line_refusal(again, 1, "already exists", "new directory")


def test_the_init_container_export_refuses_a_tampered_model_and_writes_nothing(promoted, reg, tmp_path):  # noqa: F811
    staged, cfg = promoted
    weights = reg.root / "production" / staged.digest[7:] / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    dest = tmp_path / "models" / "current"
    res = run_cli("verify", "--config", str(cfg), "--export", str(dest))
    assert_one_line_refusal(res, 1, "does not verify")
    assert not dest.exists()
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # no half-written copy
