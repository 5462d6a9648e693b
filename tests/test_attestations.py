"""Signed evidence beside the weights (airlock/attest.py): in-toto statements per gate, SLSA provenance and a
verification summary about one model digest, signed by the model's signer, checked wherever the model is."""

from __future__ import annotations

import json
import shutil

import pytest

from airlock import attest, modelsign
from airlock.errors import RegistryError
from airlock.hashing import hash_tree
from tests.conftest import sign_model
from tests.test_registry import RUN, reg, signed_model  # noqa: F401 - fixtures


def test_the_statements_name_the_model_and_say_what_its_provenance_says(reg, signed_model):  # noqa: F811
    staged = reg.stage(*signed_model, RUN)
    att = staged.path / attest.DIR
    names = sorted(p.name for p in att.iterdir())
    assert names == ["gate-artifact.intoto.json", "slsa-provenance.intoto.json", "verification-summary.intoto.json"]
    gate = json.loads((att / "gate-artifact.intoto.json").read_text())
    assert gate["_type"] == "https://in-toto.io/Statement/v1"
    assert gate["subject"] == [{"name": "model", "digest": {"sha256": staged.digest[7:]}}]
    assert gate["predicateType"] == attest.TEST_RESULT and gate["predicate"]["result"] == "PASSED"
    slsa = json.loads((att / "slsa-provenance.intoto.json").read_text())
    assert slsa["predicateType"] == "https://slsa.dev/provenance/v1"
    assert slsa["predicate"]["runDetails"]["metadata"]["invocationId"] == RUN
    vsa = json.loads((att / "verification-summary.intoto.json").read_text())
    assert vsa["predicate"]["verificationResult"] == "PASSED"


def test_a_tampered_statement_is_refused(reg, signed_model):  # noqa: F811
    staged = reg.stage(*signed_model, RUN)
    p = staged.path / attest.DIR / "verification-summary.intoto.json"
    st = json.loads(p.read_text())
    st["predicate"]["verificationResult"] = "PASSED (edited)"
    p.write_text(json.dumps(st))
    with pytest.raises(RegistryError, match="does not verify"):
        reg.verify_object(staged.path, staged.digest)


def test_statements_about_another_digest_are_refused(reg, signed_model, keys, tmp_path):  # noqa: F811
    """Evidence moved from another model, even validly signed, is about that model."""
    model, sig = signed_model
    att = sig.parent / attest.DIR
    shutil.rmtree(att)
    prov = json.loads((model / "provenance.json").read_text())
    attest.write(att, attest.build("sha256:" + "0" * 64, prov, {}))
    modelsign.sign(att, sig.parent / attest.SIG, keys.model_key)
    with pytest.raises(RegistryError, match="is not a statement about model"):
        reg.stage(model, sig, RUN)


def test_a_gate_statement_that_contradicts_the_provenance_is_refused(reg, signed_model, keys):  # noqa: F811
    model, sig = signed_model
    att = sig.parent / attest.DIR
    shutil.rmtree(att)
    prov = json.loads((model / "provenance.json").read_text())
    prov["gates"][0]["verdict"], prov["gates"][0]["code"] = "fail", "artifact.pickle"
    attest.write(att, attest.build(hash_tree(model).root_digest, prov, {}))
    modelsign.sign(att, sig.parent / attest.SIG, keys.model_key)
    with pytest.raises(RegistryError, match="attestation of gate artifact does not say what the provenance says"):
        reg.stage(model, sig, RUN)


def test_missing_or_foreign_signed_attestations_are_refused(reg, signed_model, tmp_path):  # noqa: F811
    model, sig = signed_model
    (sig.parent / attest.SIG).unlink()
    with pytest.raises(RegistryError, match="has no signed attestations"):
        reg.stage(model, sig, RUN)
    modelsign.generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    modelsign.sign(sig.parent / attest.DIR, sig.parent / attest.SIG, tmp_path / "other.key")
    with pytest.raises(RegistryError, match="does not verify"):
        reg.stage(model, sig, RUN)
    sign_model(model, sig, tmp_path / "other.key")  # and the model itself by a key nobody trusts: refused too
    with pytest.raises(RegistryError, match="does not verify"):
        reg.stage(model, sig, RUN)
