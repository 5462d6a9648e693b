"""The OCI store against a real registry: Debian's docker-registry (distribution 2.8) started here on 127.0.0.1.
A registry object goes up as a ModelPack artifact with its signature, attestations and approvals as referrers
(tag fallback: 2.8 has no referrers API), comes back byte for byte, and is judged by the same verification as a
local object. Tampering at rest, in the manifest or against the signature is refused by name."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from airlock.errors import RegistryError
from airlock.ledger import Ledger
from registry import Registry, oci
from tests.test_registry import RUN, approvals_for

SERVER = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(root: Path, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None):
    """Start docker-registry on a free loopback port; returns (process, base URL)."""
    if not Path(SERVER).is_file():  # fail, never skip: ./setup.sh installs it
        pytest.fail("docker-registry is not installed: run ./setup.sh (Debian: docker-registry)")
    port = _free_port()
    cfg = (
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: airlock-tests\n"
    )
    if tls:
        cfg += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    if htpasswd:
        cfg += f"auth:\n  htpasswd:\n    realm: airlock-tests\n    path: {htpasswd}\n"
    cfg += "log:\n  level: error\n"
    (root / "config.yml").write_text(cfg)
    # Its log to a file: a pipe nobody reads fills up (every 404 is logged as an error) and then blocks the server.
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen([SERVER, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL, stderr=log)
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{base}/v2/", timeout=1, verify=str(tls[0]) if tls else True)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"docker-registry did not start: {(root / 'server.log').read_text()[-500:]}")
    return proc, base


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def oci_server(tmp_path_factory):
    """A plain-HTTP distribution server on loopback, storing under a directory the test can tamper with."""
    root = tmp_path_factory.mktemp("oci")
    proc, base = start_registry(root)
    yield {"base": base, "data": root / "data"}
    _stop(proc)


def _self_signed(d: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "tls.crt", d / "tls.key"


@pytest.fixture(scope="module")
def oci_tls_server(tmp_path_factory):
    """The same server behind TLS (a self-signed certificate for 127.0.0.1) and htpasswd basic auth (bcrypt)."""
    import bcrypt

    root = tmp_path_factory.mktemp("oci-tls")
    tls = _self_signed(root)
    (root / "htpasswd").write_text(f"ci:{bcrypt.hashpw(b'ci-secret-4711', bcrypt.gensalt(rounds=4)).decode()}\n")
    proc, base = start_registry(root, tls, root / "htpasswd")
    yield {"base": base, "ca": tls[0]}
    _stop(proc)


@pytest.fixture
def promoted(tmp_path, trained, keys):
    """A production object of the local registry (signature, attestations, approvals), verified."""
    from tests.test_affected import _model

    reg = Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), keys.model_pub, keys.approvers)
    staged = reg.stage(*_model(tmp_path, trained, keys, RUN, {"b0001": "a" * 64}), RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    return reg, reg.root / "production" / staged.digest.removeprefix("sha256:"), staged.digest


def _blob_file(data_dir: Path, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return data_dir / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


@contextlib.contextmanager
def _provenance_altered_at_rest(reg: Registry, oci_server, repo: str, digest: str):
    """Inside: the model's provenance.json layer, as the OCI registry stores it on disk, says b0009 for b0001."""
    body, _ = reg.client.get_manifest(repo, f"m-{digest.removeprefix('sha256:')}")
    layer = next(d for d in json.loads(body)["layers"] if d["annotations"][oci.FILEPATH] == "provenance.json")
    blob = _blob_file(oci_server["data"], layer["digest"])
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b"b0001", b"b0009"))
    try:
        yield
    finally:
        blob.write_bytes(original)


def test_an_object_goes_up_as_a_modelpack_artifact_and_comes_back_verified(oci_server, promoted, tmp_path):
    reg, obj, digest = promoted
    client = oci.Client(oci_server["base"])
    repo = "airlock-tests/roundtrip/production"
    m1 = oci.push_object(client, repo, obj, digest)
    assert oci.push_object(client, repo, obj, digest) == m1  # canonical: the same model, the same manifest digest
    body, _ = client.get_manifest(repo, m1)
    manifest = json.loads(body)
    assert manifest["artifactType"] == oci.MODEL and manifest["config"]["mediaType"] == oci.MODEL_CONFIG
    weights = next(d for d in manifest["layers"] if d["annotations"][oci.FILEPATH] == "model.safetensors")
    from airlock.hashing import sha256_file

    assert (
        weights["mediaType"] == oci.WEIGHT
        and weights["digest"] == "sha256:" + sha256_file(obj / "model" / "model.safetensors")[0]
    )
    kinds = sorted(r["artifactType"] for r in client.referrers(repo, m1))
    assert kinds == sorted([oci.BUNDLE, oci.ATTESTATIONS, oci.APPROVALS])  # listed once each (tag fallback)
    # The signature checks the manifest before anything is downloaded: every layer is a signed file and digest.
    oci.check_against_signature(body, (obj / "model.sig").read_bytes())
    pulled = tmp_path / "pulled" / digest.removeprefix("sha256:")
    assert oci.pull_object(client, repo, m1, pulled) == digest
    model = reg.verify_object(pulled, digest)  # the local registry's own checks, unchanged
    assert model.digest == digest
    assert (pulled / "approvals.json").read_bytes() == (obj / "approvals.json").read_bytes()


def test_a_blob_altered_at_rest_is_refused_by_name(oci_server, promoted, tmp_path):
    reg, obj, digest = promoted
    client = oci.Client(oci_server["base"])
    repo = "airlock-tests/tamper/production"
    m = oci.push_object(client, repo, obj, digest)
    body, _ = client.get_manifest(repo, m)
    weights = next(d for d in json.loads(body)["layers"] if d["annotations"][oci.FILEPATH] == "model.safetensors")
    blob = _blob_file(oci_server["data"], weights["digest"])
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 1
    blob.write_bytes(bytes(raw))
    with pytest.raises(RegistryError, match=r"the OCI blob sha256:.* for model.safetensors does not match its digest"):
        oci.pull_object(client, repo, m, tmp_path / "pulled")
    # Nothing of the bad blob stays behind: neither the file nor its partial download.
    assert not [p.name for p in (tmp_path / "pulled" / "model").iterdir() if p.name.startswith((".model.", "model."))]
    blob.write_bytes(bytes(raw[:-1]) + bytes([raw[-1] ^ 1]))  # restore for the other tests (blobs are shared)


def test_a_manifest_whose_layers_are_not_the_signed_files_is_refused_before_download(oci_server, promoted, tmp_path):
    reg, obj, digest = promoted
    client = oci.Client(oci_server["base"])
    repo = "airlock-tests/swap/production"
    m = oci.push_object(client, repo, obj, digest)
    body, _ = client.get_manifest(repo, m)
    manifest = json.loads(body)
    # Another model's weights under this model's manifest: consistent digests, a valid upload, not what was signed.
    other = tmp_path / "other.safetensors"
    other.write_bytes((obj / "model" / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    od = "sha256:" + __import__("hashlib").sha256(other.read_bytes()).hexdigest()
    client.push_blob(repo, od, other)
    for d in manifest["layers"]:
        if d["annotations"][oci.FILEPATH] == "model.safetensors":
            d["digest"], d["size"] = od, other.stat().st_size
    forged = oci.canonical(manifest)
    fd = client.put_manifest(repo, oci._sha(forged), forged, oci.MANIFEST)
    with pytest.raises(RegistryError, match="the manifest's layers are not the signed files: model.safetensors"):
        oci.check_against_signature(forged, (obj / "model.sig").read_bytes())
    # Pulled anyway, the object fails the registry's verification (the signature covers every file).
    with pytest.raises(RegistryError):
        pulled = tmp_path / "forged"
        oci.pull_object(client, repo, fd, pulled)  # the referrers belong to the real manifest: no signature
        reg.verify_object(pulled, digest)


@pytest.mark.parametrize(
    "path", ["../escape", "/etc/passwd", "evidence/../../x", "model.safetensors/", "./training.json", "notes.txt"]
)
def test_an_annotation_path_outside_the_object_is_refused(path):
    with pytest.raises(RegistryError, match="names the path"):
        oci._safe(path, ("model.safetensors", "training.json", "evidence"))


def test_an_oci_location_is_parsed_strictly():
    loc = oci.Location.parse("oci+http://127.0.0.1:5000/team/digits")
    assert loc.base == "http://127.0.0.1:5000" and loc.repo("production") == "team/digits/production"
    assert oci.Location.parse("oci://registry.corp:443/ml/fraud").base == "https://registry.corp:443"
    for bad in ("http://x/y", "oci://", "oci://host/Upper", "oci://host/../x"):
        with pytest.raises(RegistryError, match="is not an OCI registry location"):
            oci.Location.parse(bad)


def test_over_tls_with_basic_auth_the_pinned_ca_and_the_password_are_both_required(oci_tls_server, promoted, tmp_path):
    reg, obj, digest = promoted
    base, ca = oci_tls_server["base"], oci_tls_server["ca"]
    repo = "airlock-tests/tls/production"
    client = oci.Client(base, auth=("ci", "ci-secret-4711"), ca=ca)
    m = oci.push_object(client, repo, obj, digest)
    pulled = tmp_path / "pulled" / digest.removeprefix("sha256:")
    oci.pull_object(client, repo, m, pulled)
    assert reg.verify_object(pulled, digest).digest == digest
    with pytest.raises(RegistryError, match=r"refused GET .*: HTTP 401"):
        oci.Client(base, auth=("ci", "wrong"), ca=ca).get_manifest(repo, m)
    with pytest.raises(RegistryError, match=r"refused GET .*: HTTP 401"):
        oci.Client(base, ca=ca).get_manifest(repo, m)
    # Without the pinned CA the server's certificate is not trusted: no fallback to skipping verification.
    with pytest.raises(RegistryError, match=r"cannot be reached: SSLError"):
        oci.Client(base, auth=("ci", "ci-secret-4711")).get_manifest(repo, m)


def test_promotion_by_digest_mounts_the_blobs_and_moves_the_tag_last(oci_server, promoted, tmp_path):
    reg, obj, digest = promoted
    client = oci.Client(oci_server["base"])
    staging, production = "airlock-tests/promo/staging", "airlock-tests/promo/production"
    m = oci.push_object(client, staging, obj, digest)
    assert client.get_manifest(production, "current", ok_missing=True) is None
    oci.promote(client, staging, production, m, approvals=obj / "approvals.json")
    body, _ = client.get_manifest(production, "current")
    assert oci._sha(body) == m  # the same manifest digest in production as in staging
    kinds = sorted(r["artifactType"] for r in client.referrers(production, m))
    assert kinds == sorted([oci.BUNDLE, oci.ATTESTATIONS, oci.APPROVALS])
    pulled = tmp_path / "prod" / digest.removeprefix("sha256:")
    oci.pull_object(client, production, m, pulled)
    assert reg.verify_object(pulled, digest).digest == digest
    # The blobs were mounted, not uploaded again: the server holds one copy of the weights.
    weights = next(d for d in json.loads(body)["layers"] if d["annotations"][oci.FILEPATH] == "model.safetensors")
    assert _blob_file(oci_server["data"], weights["digest"]).is_file()
    links = list(
        (oci_server["data"] / "docker" / "registry" / "v2" / "repositories").glob(
            f"airlock-tests/promo/*/_layers/sha256/{weights['digest'].removeprefix('sha256:')}/link"
        )
    )
    assert len(links) == 2  # linked from both repositories, stored once


# -- the registry with the OCI registry as its store: the same verification, objects fetched afresh each time -------


def _oci_registry(oci_server, prefix: str, cache: Path, keys, ledger: Path):
    from registry.oci_registry import OciRegistry

    loc = oci.Location.parse(f"oci+http://{oci_server['base'].removeprefix('http://')}/{prefix}")
    return OciRegistry(loc, oci.Client(loc.base), cache, Ledger(ledger), keys.model_pub, keys.approvers)


def test_the_oci_backed_registry_stages_promotes_and_another_machine_verifies(oci_server, tmp_path, trained, keys):
    from tests.test_affected import _approvals, _model

    reg = _oci_registry(oci_server, "airlock-tests/e2e", tmp_path / "pipeline-cache", keys, tmp_path / "ledger.jsonl")
    staged = reg.stage(*_model(tmp_path, trained, keys, RUN, {"b0001": "a" * 64}), RUN)
    assert reg.staged_for_run(RUN).digest == staged.digest
    reg.promote(staged.digest, _approvals(keys, RUN, staged.digest))
    # Another machine: an empty working directory, the same ledger (for the anchor), nothing but the OCI registry.
    other = _oci_registry(oci_server, "airlock-tests/e2e", tmp_path / "server-cache", keys, tmp_path / "ledger.jsonl")
    model, verdict = other.verify_stage("production")
    assert model.digest == staged.digest and verdict is not None and verdict.ok
    assert str(tmp_path / "server-cache") in str(model.path)  # fetched afresh, not read from the pipeline's copy
    assert other.current_pointer("production")["run_id"] == RUN
    # Tampered at rest in the OCI registry: the next check refuses it by name.
    with _provenance_altered_at_rest(other, oci_server, "airlock-tests/e2e/production", staged.digest):
        with pytest.raises(RegistryError, match="for provenance.json does not match its digest"):
            other.verify_stage("production")


def test_staging_again_over_an_object_altered_at_rest_records_what_was_found(oci_server, tmp_path, trained, keys):
    """A model is pushed once; if what staging holds under its tag no longer verifies, the verified object is pushed
    over it and the tampering is recorded (registry.restaged), not silently repaired."""
    from tests.test_affected import _model

    reg = _oci_registry(oci_server, "airlock-tests/restage", tmp_path / "cache", keys, tmp_path / "ledger.jsonl")
    model, sig = _model(tmp_path, trained, keys, RUN, {"b0001": "a" * 64})
    digest = reg.stage(model, sig, RUN).digest
    with _provenance_altered_at_rest(reg, oci_server, "airlock-tests/restage/staging", digest):
        assert reg.stage(model, sig, RUN).digest == digest
    (entry,) = [e for e in reg.ledger.entries() if e["kind"] == "registry.restaged"]
    assert entry["data"]["digest"] == digest and "provenance.json does not match its digest" in entry["data"]["found"]
    assert reg.staged_for_run(RUN).digest == digest
