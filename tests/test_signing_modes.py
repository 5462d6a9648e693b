"""Signing modes: the EC key file and a key inside a PKCS#11 token (SoftHSM2 from Debian, a real token set up here by
softhsm2-util and OpenSC's pkcs11-tool). The token signs, nobody reads the key out, the registry verifies with the
public key exported from it, and the PIN is never in the policy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from airlock import modelsign, policy
from airlock.errors import PolicyError, RegistryError, SigningError
from airlock.ledger import Ledger
from registry import Registry

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "4711-airlock"


@pytest.fixture
def token(tmp_path, monkeypatch):
    """A fresh SoftHSM2 token holding an EC P-256 key pair generated inside it; its public key exported as PEM."""
    tools = {t: shutil.which(t) for t in ("softhsm2-util", "pkcs11-tool", "openssl")}
    if not all(tools.values()) or not MODULE.is_file():  # fail, never skip: ./setup.sh installs them
        pytest.fail(f"SoftHSM2 / OpenSC missing ({tools}, {MODULE}): run ./setup.sh (Debian: softhsm2 opensc)")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True)  # noqa: E731
    run("softhsm2-util", "--init-token", "--free", "--label", "airlock", "--pin", PIN, "--so-pin", "so-4711")
    p11 = ["pkcs11-tool", "--module", str(MODULE), "--token-label", "airlock"]
    run(*p11, "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "model", "--id", "01")
    run(*p11, "--read-object", "--type", "pubkey", "--label", "model", "-o", str(tmp_path / "model.pub.der"))
    run(
        "openssl",
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "model.pub.der"),
        "-out",
        str(tmp_path / "model.pub"),
    )
    return {"uri": f"pkcs11:token=airlock;object=model?module-path={MODULE}", "pub": tmp_path / "model.pub", "p11": p11}


def _policy(tmp_path: Path, signing: str) -> Path:
    p = tmp_path / "airlock.toml"
    p.write_text(
        f'[repo]\npath = "{tmp_path}"\n[trust]\nallowed_signers = "a"\napprovers = "b"\nmodel_signing_public_key = "c"\n'
        f'{signing}\n[data.train]\ndir = "x"\nmanifest = "x.json"\n[data.golden]\ndir = "y"\nmanifest = "y.json"\n'
        f'[registry]\npath = "{tmp_path / "registry"}"\n[ledger]\npath = "{tmp_path / "ledger.jsonl"}"\n'
    )
    return p


def test_a_key_in_a_pkcs11_token_signs_and_the_registry_verifies_it(token, trained, tmp_path, monkeypatch, keys):
    monkeypatch.setenv("AIRLOCK_PKCS11_PIN", PIN)
    pol = policy.load(_policy(tmp_path, f'[signing]\nmode = "pkcs11"\npkcs11_uri = "{token["uri"]}"'))
    signer = modelsign.signer(pol)
    assert signer.describe() == {"mode": "pkcs11", "key": "pkcs11:token=airlock;object=model"}  # no PIN, no module
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    (model / "provenance.json").write_text('{"run_id": "r1"}')
    modelsign.sign(model, tmp_path / "model.sig", signer)
    # Verified with the public key exported from the token; refused under any other key.
    reg = Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), token["pub"], keys.approvers)
    staged = reg.stage(model, tmp_path / "model.sig", "r1")
    assert staged.digest.startswith("sha256:")
    other = Registry(tmp_path / "other", Ledger(tmp_path / "l2.jsonl"), keys.model_pub, keys.approvers)
    with pytest.raises(RegistryError, match="does not verify"):
        other.stage(model, tmp_path / "model.sig", "r1")


def test_nobody_reads_the_private_key_out_of_the_token(token):
    """The attack a key file invites - copying it - has no equivalent: the token marks the key sensitive and
    non-extractable and answers no value for it, even to a process logged in with the PIN."""
    import PyKCS11

    lib = PyKCS11.PyKCS11Lib()
    lib.load(str(MODULE))
    [slot] = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == "airlock"]
    session = lib.openSession(slot)
    session.login(PIN)
    try:
        [key] = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_LABEL, "model")])
        sensitive, extractable = session.getAttributeValue(key, [PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_EXTRACTABLE])
        assert sensitive is True and extractable is False
        assert session.getAttributeValue(key, [PyKCS11.CKA_VALUE]) == [None]  # CKR_ATTRIBUTE_SENSITIVE
    finally:
        session.logout()
        session.closeSession()


def test_a_wrong_or_missing_pin_is_a_one_line_refusal(token, trained, tmp_path, monkeypatch):
    pol = policy.load(_policy(tmp_path, f'[signing]\nmode = "pkcs11"\npkcs11_uri = "{token["uri"]}"'))
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    monkeypatch.delenv("AIRLOCK_PKCS11_PIN", raising=False)
    with pytest.raises(SigningError, match=r"\$AIRLOCK_PKCS11_PIN is not set"):
        modelsign.sign(model, tmp_path / "model.sig", modelsign.signer(pol))
    monkeypatch.setenv("AIRLOCK_PKCS11_PIN", "x9-not-the-pin")
    with pytest.raises(SigningError, match=r"could not sign .*\(pkcs11 mode\).*CKR_PIN_INCORRECT") as e:
        modelsign.sign(model, tmp_path / "model.sig", modelsign.signer(pol))
    assert "x9-not-the-pin" not in e.value.one_line()  # the PIN never reaches a message
    assert not (tmp_path / "model.sig").exists()


def test_the_pin_is_refused_in_the_policy_and_pkcs11_mode_needs_a_uri(tmp_path):
    with pytest.raises(PolicyError, match="must not hold the PIN"):
        policy.load(_policy(tmp_path, '[signing]\nmode = "pkcs11"\npkcs11_uri = "pkcs11:token=a;object=b?pin-value=1"'))
    with pytest.raises(PolicyError, match="needs signing.pkcs11_uri"):
        policy.load(_policy(tmp_path, '[signing]\nmode = "pkcs11"'))
    with pytest.raises(PolicyError, match="mode"):
        policy.load(_policy(tmp_path, '[signing]\nmode = "vault"'))
