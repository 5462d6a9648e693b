"""Signing modes: the EC key file and a key inside a PKCS#11 token (SoftHSM2 from Debian, a real token set up here by
softhsm2-util and OpenSC's pkcs11-tool). The token signs, nobody reads the key out, the registry verifies with the
public key exported from it, and the PIN is never in the policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airlock import modelsign, policy
from airlock.errors import PolicyError, RegistryError, SigningError
from airlock.ledger import Ledger
from registry import Registry
from tests.conftest import sign_model

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "4711-airlock"


def make_token(d: Path) -> dict:
    """A fresh SoftHSM2 token in ``d`` holding an EC P-256 key pair generated inside it; its public key exported as
    PEM; ``env``: what a process needs to reach it (SOFTHSM2_CONF) and its PIN."""
    tools = {t: shutil.which(t) for t in ("softhsm2-util", "pkcs11-tool", "openssl")}
    if not all(tools.values()) or not MODULE.is_file():  # fail, never skip: ./setup.sh installs them
        pytest.fail(f"SoftHSM2 / OpenSC missing ({tools}, {MODULE}): run ./setup.sh (Debian: softhsm2 opensc)")
    (d / "tokens").mkdir(parents=True)
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True, env=env)  # noqa: E731
    run("softhsm2-util", "--init-token", "--free", "--label", "airlock", "--pin", PIN, "--so-pin", "so-4711")
    p11 = ["pkcs11-tool", "--module", str(MODULE), "--token-label", "airlock"]
    run(*p11, "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "model", "--id", "01")
    run(*p11, "--read-object", "--type", "pubkey", "--label", "model", "-o", str(d / "model.pub.der"))
    run("openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(d / "model.pub.der"), "-out", str(d / "model.pub"))
    return {
        "uri": f"pkcs11:token=airlock;object=model?module-path={MODULE}",
        "pub": d / "model.pub",
        "p11": p11,
        "env": {"SOFTHSM2_CONF": str(conf), "AIRLOCK_PKCS11_PIN": PIN},
    }


@pytest.fixture
def token(tmp_path, monkeypatch):
    t = make_token(tmp_path / "hsm")
    monkeypatch.setenv("SOFTHSM2_CONF", t["env"]["SOFTHSM2_CONF"])
    return t


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
    sign_model(model, tmp_path / "model.sig", signer)  # the model and its attestations, both by the token
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


# -- certificate chains of a company CA, and key rotation: the signer policy (airlock/verification.py) -------------


def _ca(name: str):
    """A company root CA (made here with cryptography): its key and self-signed certificate."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca, email: str, tmp_path: Path, name: str, days: tuple[float, float] = (-1 / 24, 30)) -> tuple[Path, Path]:
    """An EC signing key and its certificate for ``email`` from ``ca``; written as PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model signer")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature
        .sign(ca_key, hashes.SHA256())
    )
    k, c = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return k, c


def _pem(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _signed_by_certificate(trained, tmp_path: Path, ca, email: str) -> tuple[Path, Path]:
    model, sig = tmp_path / "model", tmp_path / "model.sig"
    shutil.copytree(trained, model)
    key, cert = _leaf(ca, email, tmp_path, "signer")
    (tmp_path / "ca.pem").write_text(_pem(ca[1]))  # carried in the bundle; verifiers trust their own copy
    chain = f'certificate_chain = ["{tmp_path / "ca.pem"}"]'
    signing = f'mode = "certificate"\nprivate_key = "{key}"\ncertificate = "{cert}"\n{chain}'
    pol = policy.load(_policy(tmp_path, f"[signing]\n{signing}"))
    signer = modelsign.signer(pol)
    assert signer.describe()["mode"] == "certificate"
    modelsign.sign(model, sig, signer)
    return model, sig


def _signers_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "model_signers.toml"
    p.write_text(body)
    return p


def test_a_certificate_of_the_company_ca_for_the_named_subject_verifies(trained, tmp_path):
    ca = _ca("Corp Model Signing CA")
    model, sig = _signed_by_certificate(trained, tmp_path, ca, "model-signer@corp.example")
    ok = _signers_file(
        tmp_path, f"[[signer]]\ncertificate_chain = '''{_pem(ca[1])}'''\nsubject = \"model-signer@corp.example\"\n"
    )
    who = modelsign.verify(model, sig, ok)
    assert who.startswith("certificate model-signer@corp.example (issuer CN=Corp Model Signing CA")


def test_a_certificate_from_another_ca_or_for_another_subject_is_refused(trained, tmp_path):
    ca, other = _ca("Corp Model Signing CA"), _ca("Somebody Else's CA")
    model, sig = _signed_by_certificate(trained, tmp_path, other, "model-signer@corp.example")
    wrong_ca = _signers_file(
        tmp_path, f"[[signer]]\ncertificate_chain = '''{_pem(ca[1])}'''\nsubject = \"model-signer@corp.example\"\n"
    )
    with pytest.raises(RegistryError, match="no certificate chain to the policy's CA"):
        modelsign.verify(model, sig, wrong_ca)
    (tmp_path / "b").mkdir()
    model2, sig2 = _signed_by_certificate(trained, tmp_path / "b", ca, "intern@corp.example")
    with pytest.raises(RegistryError, match="certificate subject intern@corp.example is not model-signer@corp.example"):
        modelsign.verify(model2, sig2, _signers_file(tmp_path, _certificate_signer(ca)))
    with pytest.raises(RegistryError, match="lists no"):
        modelsign.verify(model2, sig2, _signers_file(tmp_path, "x = 1\n"))
    # No CA in the policy: refused, never verified against the web's roots (model_signing's fallback).
    no_ca = '[[signer]]\ncertificate_chain = "none"\nsubject = "intern@corp.example"\n'
    with pytest.raises(RegistryError, match="no CA chain \\(web roots are never used\\)"):
        modelsign.verify(model2, sig2, _signers_file(tmp_path, no_ca))


def _certificate_signer(ca, subject: str = "model-signer@corp.example") -> str:
    q = "'" * 3
    return f'[[signer]]\ncertificate_chain = {q}{_pem(ca[1])}{q}\nsubject = "{subject}"\n'


def test_key_rotation_accepts_the_old_key_until_its_date_then_refuses_it(trained, tmp_path, keys):
    """AnyOf(new key, old key until a date): a model signed by the old key verifies before the date, not after."""
    import datetime as dt

    model, sig = tmp_path / "model", tmp_path / "model.sig"
    shutil.copytree(trained, model)
    modelsign.sign(model, sig, keys.model_key)  # the old key
    modelsign.generate_keypair(tmp_path / "new.key", tmp_path / "new.pub")
    old_pem, new_pem = keys.model_pub.read_text(), (tmp_path / "new.pub").read_text()
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    yesterday = dt.date.today() - dt.timedelta(days=1)
    rotating = (
        f"[[signer]]\nkey = '''{new_pem}'''\n\n[[signer]]\nkey = '''{old_pem}'''\nuntil = {tomorrow.isoformat()}\n"
    )
    assert modelsign.verify(model, sig, _signers_file(tmp_path, rotating)).startswith("key SHA256:")
    retired = rotating.replace(tomorrow.isoformat(), yesterday.isoformat())
    with pytest.raises(RegistryError, match=rf"not signed by key SHA256:.*; key SHA256:\S+ was retired on {yesterday}"):
        modelsign.verify(model, sig, _signers_file(tmp_path, retired))


# -- Sigstore keyless, verified offline against real public bundles (tests/fixtures/sigstore/README.md) -----------

SIGSTORE = Path(__file__).parent / "fixtures" / "sigstore"
IDENTITY, ISSUER = "stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2"


def _keyless(tmp_path: Path, identity: str = IDENTITY, issuer: str = ISSUER, ignore: str = "") -> Path:
    q = "'" * 3
    trust = (SIGSTORE / "trust_config.json").read_text()
    body = f'{ignore}[[signer]]\nidentity = "{identity}"\nissuer = "{issuer}"\ntrust_config = {q}{trust}{q}\n'
    return _signers_file(tmp_path, body)


@pytest.fixture
def keyless_model(tmp_path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    model.mkdir()
    for f in ("signme-1", "signme-2", "ignore-me"):
        shutil.copy2(SIGSTORE / "v1.1.0-sigstore" / f, model / f)
    return model, SIGSTORE / "v1.1.0-sigstore" / "model.sig"


def test_a_real_keyless_bundle_verifies_offline_for_its_identity_and_issuer(keyless_model, tmp_path):
    model, sig = keyless_model
    policy_file = _keyless(tmp_path, ignore='ignore_paths = ["ignore-me", "model.sig"]\n')
    assert modelsign.verify(model, sig, policy_file) == f"keyless {IDENTITY} ({ISSUER})"


def test_a_keyless_bundle_for_another_identity_or_issuer_is_refused(keyless_model, tmp_path):
    """The wrong workflow identity and the wrong issuer: Fulcio certifies anyone, the policy names whom."""
    model, sig = keyless_model
    allow = 'ignore_paths = ["ignore-me", "model.sig"]\n'
    workflow = "https://github.com/corp/models/.github/workflows/retrain.yml@refs/heads/main"
    with pytest.raises(RegistryError, match=f"not signed keylessly by {workflow}"):
        modelsign.verify(model, sig, _keyless(tmp_path, identity=workflow, ignore=allow))
    with pytest.raises(RegistryError, match="not signed keylessly by .*token.actions.githubusercontent.com"):
        modelsign.verify(
            model, sig, _keyless(tmp_path, issuer="https://token.actions.githubusercontent.com", ignore=allow)
        )
    (model / "signme-1").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="not signed keylessly"):
        modelsign.verify(model, sig, _keyless(tmp_path, ignore=allow))


def test_a_signature_that_leaves_out_more_than_the_policy_allows_is_refused(keyless_model, tmp_path):
    """That bundle's signed payload ignores `ignore-me`: the signature is valid, but it does not cover the whole
    directory, and the policy never said that file may go unsigned."""
    model, sig = keyless_model
    with pytest.raises(RegistryError, match="leaves out paths the policy does not allow: ignore-me, model.sig"):
        modelsign.verify(model, sig, _keyless(tmp_path))


def test_a_key_signature_that_ignores_the_weights_is_refused(trained, tmp_path, keys):
    """Signed with the trusted key, but with the weights in the payload's ignore_paths (model_signing would then
    verify whatever weights lie there): refused."""
    import model_signing

    model, sig = tmp_path / "model", tmp_path / "model.sig"
    shutil.copytree(trained, model)
    cfg = model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.model_key)
    cfg.set_hashing_config(model_signing.hashing.Config().set_ignored_paths(paths=["model.safetensors"]))
    cfg.sign(model, sig)
    with pytest.raises(RegistryError, match="leaves out paths the policy does not allow: model.safetensors"):
        modelsign.verify(model, sig, keys.model_pub)


def test_an_expired_certificate_signs_nothing_and_a_model_signed_after_expiry_is_refused(trained, tmp_path, keys):
    """model_signing checks a chain as of the certificate's start, so an expired certificate would still sign and
    verify: Airlock's signer refuses it, and the registry holds the certificate against the model's signing time."""
    import datetime as dt

    import model_signing

    from airlock.ledger import Ledger

    ca = _ca("Corp Model Signing CA")
    key, cert = _leaf(ca, "model-signer@corp.example", tmp_path, "expired", days=(-3, -2))
    (tmp_path / "ca.pem").write_text(_pem(ca[1]))
    chain = f'certificate_chain = ["{tmp_path / "ca.pem"}"]'
    signing = f'mode = "certificate"\nprivate_key = "{key}"\ncertificate = "{cert}"\n{chain}'
    model, sig = tmp_path / "model", tmp_path / "model.sig"
    shutil.copytree(trained, model)
    with pytest.raises(SigningError, match="is not valid now"):
        modelsign.sign(model, sig, modelsign.signer(policy.load(_policy(tmp_path, f"[signing]\n{signing}"))))
    # Signed anyway, with model_signing directly, by someone holding the expired certificate's key.
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (model / "provenance.json").write_text(json.dumps({"run_id": "r1", "created_at": now}))

    def sign_expired(directory: Path, signature: Path) -> None:
        model_signing.signing.Config().use_certificate_signer(
            private_key=key, signing_certificate=cert, certificate_chain=[tmp_path / "ca.pem"]
        ).sign(directory, signature)

    sign_expired(model, sig)
    att = tmp_path / "attestations"
    from airlock import attest
    from airlock.hashing import hash_tree

    attest.write(att, attest.build(hash_tree(model).root_digest, {"run_id": "r1", "created_at": now}, {}))
    sign_expired(att, tmp_path / "attestations.sig")
    trust_root = _signers_file(tmp_path, _certificate_signer(ca))
    assert modelsign.verify(model, sig, trust_root).startswith("certificate model-signer@corp.example")  # the gap
    reg = Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), trust_root, keys.approvers)
    with pytest.raises(RegistryError, match="outside its certificate's validity"):
        reg.stage(model, sig, "r1")


# -- keyless signing: the OIDC token, from GitHub's token endpoint (a real HTTP server here) or a projected file ----

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
WORKFLOW = "ORG/REPO/.github/workflows/retrain-keyless.yml@refs/heads/main"


def _jwt(aud: str = "sigstore", lifetime: int = 300, iss: str = GITHUB_ISSUER, **claims) -> str:
    import time

    import jwt  # PyJWT, which sigstore uses: unsigned content is what sigstore reads before Fulcio checks it

    now = int(time.time())
    body = {"iss": iss, "aud": aud, "sub": "repo:ORG/REPO:ref:refs/heads/main", "iat": now - 10, "exp": now + lifetime}
    return jwt.encode(
        {**body, "job_workflow_ref": WORKFLOW, **claims}, "not checked by the client, only by Fulcio", "HS256"
    )


@pytest.fixture
def github_token_endpoint(monkeypatch):
    """GitHub's OIDC token-request endpoint as a job with id-token: write sees it: a URL and a request token in the
    environment; the endpoint answers {"value": <JWT for the asked audience>} to that bearer token only."""
    import http.server
    import threading
    import urllib.parse

    served = {"token": _jwt(), "asked": []}

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            served["asked"].append(q.get("audience", [""])[0])
            ok = self.headers.get("Authorization") == "bearer request-token-4711"
            body = json.dumps({"value": served["token"]} if ok else {"message": "bad credentials"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://127.0.0.1:{srv.server_port}/token?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-4711")
    yield served
    srv.shutdown()


def _unreachable_sigstore(tmp_path: Path) -> Path:
    """A trust configuration whose Fulcio, OIDC issuer, Rekor and TSA are all a closed port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    cfg = json.loads((SIGSTORE / "trust_config.json").read_text())
    for k in ("caUrls", "oidcUrls", "rekorTlogUrls", "tsaUrls"):
        for u in cfg["signingConfig"].get(k, []):
            u["url"] = f"http://127.0.0.1:{port}"
    p = tmp_path / "unreachable-trust-config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_keyless_signing_without_an_oidc_identity_is_refused_and_starts_no_browser_login(
    trained, tmp_path, monkeypatch
):
    for v in ("GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "GITLAB_CI"):
        monkeypatch.delenv(v, raising=False)
    pol = policy.load(_policy(tmp_path, '[signing]\nmode = "keyless"'))
    with pytest.raises(SigningError, match=r"needs an OIDC identity and none is here") as e:
        modelsign.sign(trained, tmp_path / "model.sig", modelsign.signer(pol))
    assert "id-token: write" in e.value.one_line() and not (tmp_path / "model.sig").exists()
    # A GitHub job without id-token: write has the variables' absence to show for it: a reason, not a login prompt.
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(SigningError, match=r"ambient OIDC credential is unusable.*ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        modelsign.signer(pol).describe()


def test_keyless_signing_takes_the_github_token_and_refuses_a_stale_or_misdirected_one(
    github_token_endpoint, trained, tmp_path
):
    pol = policy.load(
        _policy(tmp_path, f'[signing]\nmode = "keyless"\nsigstore_trust_config = "{_unreachable_sigstore(tmp_path)}"')
    )
    # The certificate will name the workflow, as GitHub's token says; the provenance records that, never the token.
    assert modelsign.signer(pol).describe() == {
        "mode": "keyless",
        "key": f"sigstore https://github.com/{WORKFLOW} (issuer {GITHUB_ISSUER})",
    }
    assert github_token_endpoint["asked"] == ["sigstore"]
    # With the token in hand, signing goes to Fulcio; here nothing answers, and the refusal is one line.
    with pytest.raises(SigningError, match=r"could not sign .*\(keyless mode\)") as e:
        modelsign.sign(trained, tmp_path / "model.sig", modelsign.signer(pol))
    assert "Fulcio and Rekor" in e.value.one_line()
    assert github_token_endpoint["token"] not in e.value.one_line()
    assert not (tmp_path / "model.sig").exists()
    # A token past its lifetime, or minted for another audience (e.g. a cloud's), is refused before any request.
    for bad, reason in (
        (_jwt(lifetime=-60), "not usable for Sigstore: it expired at"),
        (_jwt(aud="https://vault.corp"), "unusable: .*audience .*expected sigstore, got https://vault.corp"),
    ):
        github_token_endpoint["token"] = bad
        with pytest.raises(SigningError, match=reason):
            modelsign.sign(trained, tmp_path / "model.sig", modelsign.signer(pol))


def test_keyless_signing_on_kubernetes_reads_a_projected_service_account_token(trained, tmp_path):
    token = tmp_path / "tokens" / "sigstore"
    pol = policy.load(_policy(tmp_path, f'[signing]\nmode = "keyless"\nidentity_token = "{token}"'))
    with pytest.raises(SigningError, match=r"cannot read the OIDC identity token at .*sigstore"):
        modelsign.signer(pol).describe()
    token.parent.mkdir()
    eks = "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF"
    token.write_text(_jwt(iss=eks, sub="system:serviceaccount:airlock:retrain") + "\n")
    assert modelsign.signer(pol).describe()["key"] == f"sigstore system:serviceaccount:airlock:retrain (issuer {eks})"


def test_the_sandbox_environment_carries_no_oidc_token_request_variables(github_token_endpoint, tmp_path):
    from airlock.sandbox import Sandbox

    job = Sandbox(mode="environment").job("probe", rw={"home": tmp_path})
    env = job._env(str(tmp_path))
    assert not {k for k in env if k.startswith(("ACTIONS_", "GITHUB_"))}, env
