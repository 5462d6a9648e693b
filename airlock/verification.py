"""Who may sign models: small composable verification policies, in the style of sigstore-python's ``verify.policy``.

The trust root ``trust.model_signing_public_key`` is either a PEM public key (one key: the demo) or a *signer
policy* file (TOML) listing who may sign, any one of whom suffices::

    [[signer]]                       # the current key (a key file, or the public key a PKCS#11 token exported)
    key = '''-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----'''

    [[signer]]                       # the previous key, during a rotation: refused after this date
    key = '''-----BEGIN PUBLIC KEY----- ... '''
    until = 2027-01-31

    [[signer]]                       # a certificate from the company CA, for this subject only
    certificate_chain = '''-----BEGIN CERTIFICATE----- ... (the CA, never web roots)'''
    subject = "model-signer@corp.example"

    [[signer]]                       # Sigstore keyless: the workflow identity GitHub's OIDC token carries
    identity = "https://github.com/ORG/REPO/.github/workflows/retrain.yml@refs/heads/main"
    issuer = "https://token.actions.githubusercontent.com"
    trust_config = '''{ ... sigstore's pinned trust configuration (tests/fixtures/sigstore/README.md) ... }'''

    ignore_paths = ["notes.txt"]     # optional: what a signature may leave unsigned beyond git metadata

    [[production.signer]]            # optional, per registry stage: production also demands one of these
    key = '''-----BEGIN PUBLIC KEY----- ... (the HSM's release key) '''

A stage's table (``[staging]``, ``[production]``) only narrows: a model in that stage must satisfy the top-level
signers AND one of the stage's (:class:`AllOf`). So a development key may sign what is staged while only the
release key (or the keyless identity of the main branch's workflow) signs what is promoted.

Security rules:
* Every failure says why, per policy (``AnyOf`` lists each signer's reason).
* A certificate is checked against the chain in the policy only: an empty chain is refused (model_signing would
  otherwise fall back to the web's roots, and any public CA could then vouch for a model). Its subject (an e-mail
  or URI SAN, else the CN) must be the policy's: a chain vouches for many certificates, the subject names one.
* A retired key (``until`` passed) is refused whatever the model's date: rotate by re-signing before the date.
* A signature's ``ignore_paths`` come from its signed payload, and model_signing honours them: a signer could
  leave the weights out. Anything beyond git metadata and the policy's ``ignore_paths`` is refused.
* Keyless signatures are verified offline, against the trust configuration pinned in the policy.
* A stage's signers are checked in addition to the top-level ones, never instead: a stage table cannot widen who
  may sign, and a model is judged by the policy of the stage it is in at every read (stage, promote, verify, load).
* The policy file is a trust root like the approvers file: outside the repository or on the protected ref, copied
  into the run and re-hashed at every decision.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from airlock.errors import RegistryError


class Mismatch(Exception):
    """This signer policy does not accept the signature; the message says why."""


class SignerPolicy(Protocol):
    def verify(self, model_dir: Path, signature: Path, now: _dt.date) -> str:
        """Who signed (for the record), or raise :class:`Mismatch` with the reason."""
        ...


def _temp_file(text: str, d: Path, name: str) -> Path:
    p = d / name
    p.write_text(text)
    return p


@dataclass(frozen=True)
class Key:
    pem: str
    until: _dt.date | None = None

    def verify(self, model_dir: Path, signature: Path, now: _dt.date) -> str:
        import model_signing

        fp = _fingerprint(self.pem)
        if self.until is not None and now > self.until:
            raise Mismatch(f"key {fp} was retired on {self.until.isoformat()}")
        with tempfile.TemporaryDirectory(prefix="airlock-key-") as d:
            try:
                model_signing.verifying.Config().use_elliptic_key_verifier(
                    public_key=_temp_file(self.pem, Path(d), "key.pem")
                ).verify(model_dir, signature)
            except Exception as e:  # noqa: BLE001 - tamper and wrong keys show up as many exception types
                raise Mismatch(f"not signed by key {fp}: {' '.join(str(e).split())[:120]}") from None
        return f"key {fp}"


@dataclass(frozen=True)
class Certificate:
    chain: str  # PEM: the company CA (and intermediates)
    subject: str

    def verify(self, model_dir: Path, signature: Path, now: _dt.date) -> str:
        import model_signing

        if "BEGIN CERTIFICATE" not in self.chain:
            raise Mismatch("the certificate policy has no CA chain (web roots are never used)")
        with tempfile.TemporaryDirectory(prefix="airlock-ca-") as d:
            try:
                model_signing.verifying.Config().use_certificate_verifier(
                    certificate_chain=[_temp_file(self.chain, Path(d), "ca.pem")]
                ).verify(model_dir, signature)
            except Exception as e:  # noqa: BLE001
                raise Mismatch(f"no certificate chain to the policy's CA: {' '.join(str(e).split())[:120]}") from None
        leaf = _leaf_certificate(signature)
        names = _subjects(leaf)
        if self.subject not in names:
            raise Mismatch(f"certificate subject {', '.join(sorted(names)) or '(none)'} is not {self.subject}")
        return f"certificate {self.subject} (issuer {leaf.issuer.rfc4514_string()})"


@dataclass(frozen=True)
class Keyless:
    """Sigstore keyless: a short-lived Fulcio certificate for an OIDC identity, logged in Rekor. Verified offline
    against the pinned trust configuration (Fulcio CAs, Rekor and CT keys) kept in the policy, never fetched."""

    identity: str  # e.g. https://github.com/ORG/REPO/.github/workflows/retrain.yml@refs/heads/main
    issuer: str  # e.g. https://token.actions.githubusercontent.com
    trust_config: str  # JSON: sigstore's ClientTrustConfig

    def verify(self, model_dir: Path, signature: Path, now: _dt.date) -> str:
        import model_signing

        with tempfile.TemporaryDirectory(prefix="airlock-sigstore-") as d:
            try:
                model_signing.verifying.Config().use_sigstore_verifier(
                    identity=self.identity,
                    oidc_issuer=self.issuer,
                    trust_config=_temp_file(self.trust_config, Path(d), "trust_config.json"),
                ).verify(model_dir, signature)
            except Exception as e:  # noqa: BLE001 - sigstore's VerificationError and model_signing's many types
                raise Mismatch(
                    f"not signed keylessly by {self.identity} ({self.issuer}): {' '.join(str(e).split())[:120]}"
                ) from None
        return f"keyless {self.identity} ({self.issuer})"


@dataclass(frozen=True)
class AnyOf:
    policies: tuple[SignerPolicy, ...]
    ignore_paths: frozenset[str] = frozenset()  # paths a signature may leave unsigned beyond model_signing's defaults

    def verify(self, model_dir: Path, signature: Path, now: _dt.date) -> str:
        reasons = []
        for p in self.policies:
            try:
                return p.verify(model_dir, signature, now)
            except Mismatch as e:
                reasons.append(str(e))
        raise Mismatch("; ".join(reasons) or "no signer is allowed")


@dataclass(frozen=True)
class AllOf:
    """Every one of ``policies`` accepts the signature (a stage's signers on top of the top-level ones)."""

    policies: tuple[tuple[str, SignerPolicy], ...]  # (what it is, for the reason; the policy)
    ignore_paths: frozenset[str] = frozenset()

    def verify(self, model_dir: Path, signature: Path, now: _dt.date) -> str:
        who = []
        for what, p in self.policies:
            try:
                who.append(p.verify(model_dir, signature, now))
            except Mismatch as e:
                raise Mismatch(f"{what}: {e}") from None
        return who[-1] if who else "nobody"


STAGES = ("staging", "production")


def load(path: str | Path, stage: str | None = None) -> SignerPolicy:
    """A PEM public key file (one :class:`Key`), or a signer policy file (``AnyOf`` its ``[[signer]]`` entries, and
    for a ``stage`` with its own table, ``AllOf`` those and the stage's)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(
            f"cannot read the model-signing trust root {path}: {type(e).__name__}",
            "check trust.model_signing_public_key in airlock.toml",
        ) from None
    if text.lstrip().startswith("-----BEGIN PUBLIC KEY-----"):
        return Key(text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"the signer policy {path} is not a PEM key or valid TOML: {e}", "fix the file") from None
    signers = doc.get("signer")
    if not isinstance(signers, list) or not signers or not set(doc) <= {"signer", "ignore_paths", *STAGES}:
        raise RegistryError(
            f"the signer policy {path} lists no [[signer]] (or holds keys other than signer, ignore_paths and "
            f"{', '.join(STAGES)})",
            "see airlock/verification.py",
        )
    extra = doc.get("ignore_paths", [])
    if not isinstance(extra, list) or not all(isinstance(x, str) and x for x in extra):
        raise RegistryError(f"ignore_paths in {path} must be a list of paths", "fix the file")
    top = AnyOf(tuple(_one(s, path, i) for i, s in enumerate(signers)), frozenset(extra))
    # Every stage table is parsed whatever stage is asked for: a broken production table fails staging too.
    stages = {name: _stage(doc[name], path, name) for name in STAGES if name in doc}
    if stage is None or stage not in stages:
        return top
    return AllOf((("signer policy", top), (f"{stage} stage", stages[stage])), top.ignore_paths)


def _stage(table: object, path: Path, name: str) -> AnyOf:
    signers = table.get("signer") if isinstance(table, dict) else None
    if not isinstance(table, dict) or set(table) != {"signer"} or not isinstance(signers, list) or not signers:
        raise RegistryError(
            f"[{name}] in the signer policy {path} must hold only [[{name}.signer]] entries", "fix the file"
        )
    return AnyOf(tuple(_one(s, path, i, f"{name} ") for i, s in enumerate(signers)))


def _one(s: object, path: Path, i: int, stage: str = "") -> SignerPolicy:
    where = f"{stage}signer {i + 1} of {path}"
    if not isinstance(s, dict):
        raise RegistryError(f"{where} is not a table", "see airlock/verification.py")
    if set(s) <= {"key", "until"} and isinstance(s.get("key"), str):
        until = s.get("until")
        if until is not None and not isinstance(until, _dt.date):
            raise RegistryError(f"{where}: until must be a date (2027-01-31)", "fix the file")
        if "BEGIN PUBLIC KEY" not in s["key"]:
            raise RegistryError(f"{where}: key is not a PEM public key", "paste the public key's PEM")
        return Key(s["key"], until)
    if set(s) == {"certificate_chain", "subject"} and all(isinstance(v, str) and v for v in s.values()):
        return Certificate(s["certificate_chain"], s["subject"])
    if set(s) == {"identity", "issuer", "trust_config"} and all(isinstance(v, str) and v for v in s.values()):
        return Keyless(s["identity"], s["issuer"], s["trust_config"])
    raise RegistryError(
        f"{where} must be {{key[, until]}}, {{certificate_chain, subject}} or {{identity, issuer, trust_config}} "
        f"(got {sorted(s)})",
        "see airlock/verification.py",
    )


# What model_signing leaves out of every signature by default (git metadata). A signature whose signed payload lists
# more - the weights, say - would verify while covering less than the model: refused unless the policy allows it.
DEFAULT_IGNORED = frozenset({".git", ".gitattributes", ".github", ".gitignore"})


def check_ignore_paths(signature: Path, allowed: frozenset[str] = frozenset()) -> None:
    """The verified signature's ``ignore_paths`` are model_signing's defaults plus what the policy allows."""
    try:
        bundle = json.loads(signature.read_text())
        payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        ignored = payload["predicate"]["serialization"].get("ignore_paths", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise Mismatch("the signature's payload names no serialization settings") from None
    if not isinstance(ignored, list):
        raise Mismatch("the signature's ignore_paths is not a list")
    beyond = sorted(set(map(str, ignored)) - DEFAULT_IGNORED - allowed)
    if beyond:
        raise Mismatch(f"the signature leaves out paths the policy does not allow: {', '.join(beyond[:5])}")


def check_certificate_window(signature: Path, signed_at: str | None) -> None:
    """A certificate-signed model was signed while its certificate was valid: model_signing checks the chain as of
    the certificate's start only, so an expired (or stolen and long-expired) certificate would still sign. The time
    is the model's signed provenance's ``created_at``, written by the flow. Key and keyless bundles pass."""
    try:
        bundle = json.loads(signature.read_text())
    except (OSError, ValueError):
        raise Mismatch("the signature is unreadable") from None
    if "x509CertificateChain" not in (bundle.get("verificationMaterial") or {}):
        return
    leaf = _leaf_certificate(signature)
    try:
        at = _dt.datetime.fromisoformat(str(signed_at))
    except ValueError:
        raise Mismatch("the model's provenance has no signing time to check its certificate against") from None
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise Mismatch(
            f"the model was signed at {at.isoformat()}, outside its certificate's validity "
            f"({leaf.not_valid_before_utc.isoformat()} to {leaf.not_valid_after_utc.isoformat()})"
        )


def allowed_ignore_paths(policy: SignerPolicy) -> frozenset[str]:
    return policy.ignore_paths if isinstance(policy, AnyOf | AllOf) else frozenset()


def _fingerprint(pem: str) -> str:
    import hashlib

    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body)
    except ValueError:
        der = body.encode()
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def _leaf_certificate(signature: Path):
    from cryptography import x509

    bundle = json.loads(signature.read_text())
    chain = bundle["verificationMaterial"]["x509CertificateChain"]["certificates"]
    return x509.load_der_x509_certificate(base64.b64decode(chain[0]["rawBytes"]))


def _subjects(cert) -> set[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names |= set(san.get_values_for_type(x509.RFC822Name)) | set(
            san.get_values_for_type(x509.UniformResourceIdentifier)
        )
    except x509.ExtensionNotFound:
        pass
    if not names:
        names |= {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    return names
