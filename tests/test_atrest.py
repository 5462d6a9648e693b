"""Encryption at rest (registry/atrest.py): a sealed file altered, swapped between models, moved, truncated, opened
with the wrong key or replaced by a plain one is refused by name, on the directory registry and on the OCI one,
with the key in a file, in the environment or in a PKCS#11 token (SoftHSM2)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airlock.errors import RegistryError
from airlock.ledger import Ledger
from registry import Registry, atrest, oci
from tests.test_oci import _blob_file, _oci_registry, oci_server  # noqa: F401 (the fixture)
from tests.test_registry import RUN

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _sealer(tmp_path: Path, name: str = "key") -> atrest.Sealer:
    kek = atrest.kek_from_policy(atrest.generate_key(tmp_path / name))
    assert kek is not None
    return atrest.Sealer(kek)


@pytest.mark.parametrize("size", [0, 1, atrest.SEGMENT, atrest.SEGMENT + 1, 2 * atrest.SEGMENT + 12345])
def test_a_sealed_file_opens_to_exactly_its_bytes_and_hides_them(tmp_path, size):
    s = _sealer(tmp_path)
    data = os.urandom(size)
    (tmp_path / "plain").write_bytes(data)
    digest = s.seal(tmp_path / "plain", tmp_path / "sealed", f"{DIGEST_A}/model.safetensors")
    stored = (tmp_path / "sealed").read_bytes()
    assert atrest.is_sealed(tmp_path / "sealed") and (size < 64 or data[:64] not in stored)
    assert s.open(tmp_path / "sealed", tmp_path / "out", f"{DIGEST_A}/model.safetensors") == digest
    assert (tmp_path / "out").read_bytes() == data


def _sealed(tmp_path: Path, s: atrest.Sealer, size: int = 3 * atrest.SEGMENT // 2) -> Path:
    (tmp_path / "plain").write_bytes(os.urandom(size))
    s.seal(tmp_path / "plain", tmp_path / "sealed", f"{DIGEST_A}/model.safetensors")
    return tmp_path / "sealed"


def _refused(s: atrest.Sealer, src: Path, dst: Path, context: str, match: str) -> None:
    with pytest.raises(RegistryError, match=match) as e:
        s.open(src, dst, context)
    assert not dst.exists(), "nothing of a refused file is left behind"
    assert "\n" not in str(e.value)


def test_a_byte_altered_at_rest_is_refused_naming_the_file(tmp_path):
    s = _sealer(tmp_path)
    sealed = _sealed(tmp_path, s)
    raw = bytearray(sealed.read_bytes())
    raw[-(atrest.SEGMENT // 4)] ^= 1  # in the last segment: everything before it decrypts, then the tag fails
    sealed.write_bytes(bytes(raw))
    _refused(s, sealed, tmp_path / "out", f"{DIGEST_A}/model.safetensors", "model.safetensors of model sha256:aaaa")


def test_a_file_swapped_in_from_another_model_or_another_path_does_not_decrypt(tmp_path):
    s = _sealer(tmp_path)
    sealed = _sealed(tmp_path, s)
    _refused(s, sealed, tmp_path / "o1", f"{DIGEST_B}/model.safetensors", "does not decrypt: .*swapped in from")
    _refused(s, sealed, tmp_path / "o2", f"{DIGEST_A}/training.json", "training.json of model sha256:aaaa.* does not")


@pytest.mark.parametrize("cut", ["segment", "tail", "extend"])
def test_a_truncated_or_extended_file_is_refused(tmp_path, cut):
    s = _sealer(tmp_path)
    sealed = _sealed(tmp_path, s)
    raw = sealed.read_bytes()
    head = len(raw) - (atrest.SEGMENT // 2 + 16) - (atrest.SEGMENT + 16)
    edited = {"segment": raw[: head + atrest.SEGMENT + 16], "tail": raw[:-1], "extend": raw + b"\0"}[cut]
    sealed.write_bytes(edited)
    _refused(s, sealed, tmp_path / "out", f"{DIGEST_A}/model.safetensors", "does not decrypt")


def test_an_edited_header_does_not_decrypt(tmp_path):
    """The header names the plaintext's digest and size: changing them (to pass another file off) breaks the key."""
    s = _sealer(tmp_path)
    sealed = _sealed(tmp_path, s)
    raw = sealed.read_bytes()
    n = int.from_bytes(raw[len(atrest.MAGIC) : len(atrest.MAGIC) + 4], "big")
    start = len(atrest.MAGIC) + 4
    header = json.loads(raw[start : start + n])
    header["digest"] = "sha256:" + "0" * 64
    new = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    sealed.write_bytes(raw[: len(atrest.MAGIC)] + len(new).to_bytes(4, "big") + new + raw[start + n :])
    _refused(s, sealed, tmp_path / "out", f"{DIGEST_A}/model.safetensors", "does not decrypt")


def test_the_wrong_key_is_named_and_a_plain_file_is_a_downgrade(tmp_path):
    s, other = _sealer(tmp_path, "k1"), _sealer(tmp_path, "k2")
    sealed = _sealed(tmp_path, s)
    _refused(other, sealed, tmp_path / "out", f"{DIGEST_A}/model.safetensors", f"with registry key {s.key_id}, not")
    _refused(s, tmp_path / "plain", tmp_path / "out", f"{DIGEST_A}/model.safetensors", "stored unencrypted")


def test_keys_from_the_environment_and_malformed_keys(tmp_path, monkeypatch):
    raw = os.urandom(32)
    monkeypatch.setenv("AIRLOCK_TEST_REGISTRY_KEY", base64.b64encode(raw).decode())
    from_env = atrest.kek_from_policy("env:AIRLOCK_TEST_REGISTRY_KEY")
    (tmp_path / "hex").write_text(raw.hex() + "\n")
    from_file = atrest.kek_from_policy(tmp_path / "hex")
    assert from_env is not None and from_file is not None and from_env.key_id == from_file.key_id
    monkeypatch.delenv("AIRLOCK_TEST_REGISTRY_KEY")
    with pytest.raises(RegistryError, match=r"\$AIRLOCK_TEST_REGISTRY_KEY is not set"):
        atrest.kek_from_policy("env:AIRLOCK_TEST_REGISTRY_KEY")
    (tmp_path / "short").write_text(base64.b64encode(raw[:16]).decode())
    with pytest.raises(RegistryError, match="not 32 bytes"):
        atrest.kek_from_policy(tmp_path / "short")


# -- the directory registry --------------------------------------------------------------------------------------


def _registry(tmp_path: Path, keys, sealer: atrest.Sealer | None, name: str = "registry") -> Registry:
    return Registry(tmp_path / name, Ledger(tmp_path / "ledger.jsonl"), keys.model_pub, keys.approvers, sealer=sealer)


def _stage_and_promote(reg: Registry, tmp_path: Path, trained: Path, keys, run: str = RUN, batch: str = "b0001"):
    from tests.test_affected import _approvals, _model

    staged = reg.stage(*_model(tmp_path / run, trained, keys, run, {batch: "a" * 64}), run)
    reg.promote(staged.digest, _approvals(keys, run, staged.digest))
    return staged.digest


def test_the_directory_registry_stores_sealed_files_and_verifies_through_them(tmp_path, trained, keys):
    s = _sealer(tmp_path)
    reg = _registry(tmp_path, keys, s)
    digest = _stage_and_promote(reg, tmp_path, trained, keys)
    for stage in ("staging", "production"):
        stored = reg.root / stage / digest.removeprefix("sha256:") / "model"
        files = [p for p in stored.rglob("*") if p.is_file()]
        assert files and all(atrest.is_sealed(p) for p in files)
        assert b"nb_classes" not in (stored / "training.json").read_bytes()
    model, verdict = reg.verify_stage("production")
    assert model.digest == digest and verdict is not None and verdict.ok
    assert not str(model.path).startswith(str(reg.root)), "plaintext is opened outside the registry"
    # A machine without the key: told so, not "altered".
    with pytest.raises(RegistryError, match="encrypted and no registry key is configured"):
        _registry(tmp_path, keys, None).verify_stage("production")
    # Another key: named.
    with pytest.raises(RegistryError, match="with registry key"):
        _registry(tmp_path, keys, _sealer(tmp_path, "other")).verify_stage("production")


def test_a_sealed_file_swapped_between_two_models_is_refused_by_name(tmp_path, trained, keys):
    s = _sealer(tmp_path)
    reg = _registry(tmp_path, keys, s)
    a = _stage_and_promote(reg, tmp_path, trained, keys)
    b_run = "0b7e9a52-0000-4000-8000-00000000000b"
    b = _stage_and_promote(reg, tmp_path, trained, keys, b_run, "b0002")
    assert a != b
    target = reg.root / "production" / b.removeprefix("sha256:") / "model" / "provenance.json"
    shutil.copy2(reg.root / "production" / a.removeprefix("sha256:") / "model" / "provenance.json", target)
    with pytest.raises(RegistryError, match=f"provenance.json of model {b[:19]}… does not decrypt"):
        reg.verify_stage("production")
    # And a plain file put where the registry seals (the attacker has no key, so tries a downgrade).
    (target).write_text(json.dumps({"run_id": b_run}))
    with pytest.raises(RegistryError, match="provenance.json of model .* stored unencrypted"):
        reg.verify_stage("production")
    refused = [e["data"] for e in reg.access.entries() if e["kind"] == "registry.refused"]
    assert refused and "unencrypted" in refused[-1]["reason"]


# -- the OCI registry --------------------------------------------------------------------------------------------


def test_the_oci_registry_holds_only_sealed_layers_and_a_swapped_layer_does_not_decrypt(
    oci_server,  # noqa: F811
    tmp_path,
    trained,
    keys,
):
    s = _sealer(tmp_path)
    reg = _oci_registry(oci_server, "airlock-tests/sealed", tmp_path / "cache", keys, tmp_path / "ledger.jsonl")
    reg.sealer = s
    a = _stage_and_promote(reg, tmp_path, trained, keys)
    b_run = "0b7e9a52-0000-4000-8000-00000000000b"
    b = _stage_and_promote(reg, tmp_path, trained, keys, b_run, "b0002")
    repo = "airlock-tests/sealed/production"
    manifests = {}
    for d in (a, b):
        body, _ = reg.client.get_manifest(repo, f"m-{d.removeprefix('sha256:')}")
        manifests[d] = json.loads(body)
        for layer in manifests[d]["layers"]:
            assert layer["mediaType"].endswith("+encrypted") and oci.PLAINTEXT in layer["annotations"]
            assert atrest.is_sealed(_blob_file(oci_server["data"], layer["digest"]))
    # Another machine with the key verifies from the OCI registry alone; one without it is told what is missing.
    other = _oci_registry(oci_server, "airlock-tests/sealed", tmp_path / "c2", keys, tmp_path / "ledger.jsonl")
    other.sealer = s
    model, verdict = other.verify_stage("production")
    assert model.digest == b and verdict is not None and verdict.ok
    keyless = _oci_registry(oci_server, "airlock-tests/sealed", tmp_path / "c3", keys, tmp_path / "ledger.jsonl")
    with pytest.raises(RegistryError, match="encrypted and no registry key is configured"):
        keyless.verify_stage("production")
    # Someone with write access to the OCI registry (not the key) swaps model a's sealed provenance into b's manifest
    # and retags it: every blob matches its digest, the layers still name the signed plaintext digests... and the
    # sealed file was sealed for a's digest, so it does not decrypt as b's.
    original = oci._sha(oci.canonical(manifests[b]))
    m = dict(manifests[b])
    pa = next(x for x in manifests[a]["layers"] if x["annotations"][oci.FILEPATH] == "provenance.json")
    m["layers"] = [
        {**pa, "annotations": {**pa["annotations"], oci.PLAINTEXT: x["annotations"][oci.PLAINTEXT]}}
        if x["annotations"][oci.FILEPATH] == "provenance.json"
        else x
        for x in m["layers"]
    ]
    body = oci.canonical(m)
    reg.client.put_manifest(repo, oci._sha(body), body, oci.MANIFEST)
    for ref in reg.client.referrers(repo, original):  # the signature and the rest, re-attached to the forgery
        art, _ = reg.client.get_manifest(repo, ref["digest"])
        doc = json.loads(art)
        subject = {**doc["subject"], "digest": oci._sha(body), "size": len(body)}
        layers = [(d, reg.client.blob_bytes(repo, d["digest"])) for d in doc["layers"]]
        reg.client.attach(repo, subject, doc["artifactType"], layers)
    reg.client.put_manifest(repo, f"m-{b.removeprefix('sha256:')}", body, oci.MANIFEST)
    with pytest.raises(RegistryError, match=f"provenance.json of model {b[:19]}… does not decrypt"):
        other.verify_stage("production")


# -- the key in a PKCS#11 token ----------------------------------------------------------------------------------


def test_a_key_inside_a_pkcs11_token_seals_and_opens_and_never_leaves_it(tmp_path, monkeypatch):
    from tests.test_signing_modes import MODULE, PIN, make_token

    t = make_token(tmp_path / "hsm")
    env = {**os.environ, **t["env"]}
    subprocess.run(
        [*t["p11"], "--login", "--pin", PIN, "--keygen", "--key-type", "AES:32", "--label", "registry-key",
         "--sensitive", "--id", "02"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    monkeypatch.setenv("SOFTHSM2_CONF", t["env"]["SOFTHSM2_CONF"])
    uri = f"pkcs11:token=airlock;object=registry-key?module-path={MODULE}"
    with pytest.raises(RegistryError, match=r"\$AIRLOCK_PKCS11_PIN is not set"):
        atrest.kek_from_policy(uri)
    monkeypatch.setenv("AIRLOCK_PKCS11_PIN", PIN)
    kek = atrest.kek_from_policy(uri)
    assert kek is not None and kek.key_id == "pkcs11:token=airlock;object=registry-key"
    s = atrest.Sealer(kek)
    sealed = _sealed(tmp_path, s)
    assert s.open(sealed, tmp_path / "out", f"{DIGEST_A}/model.safetensors")
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()
    _refused(s, sealed, tmp_path / "o2", f"{DIGEST_B}/model.safetensors", "does not decrypt")
    # The key cannot be read out of the token.
    out = subprocess.run(
        [*t["p11"], "--login", "--pin", PIN, "--read-object", "--type", "secrkey", "--label", "registry-key"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    with pytest.raises(RegistryError, match="no PIN|needs token="):
        atrest.kek_from_policy(f"pkcs11:token=airlock;object=registry-key?module-path={MODULE}&pin-value=1")
