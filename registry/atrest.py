"""Encryption at rest of the registry's model files (``[registry] encryption_key``), on both backends.

Security rules:
* A stored model file is sealed with its own random 256-bit data key, in AES-256-GCM segments of 1 MiB (the
  weights are never held whole in memory). The data key is wrapped by the registry key: a key file, an environment
  variable, or an AES key inside a PKCS#11 token, which then wraps and unwraps on the token and never hands it out.
* What a file IS is bound into every tag: the Airlock digest of the model it belongs to, its path in the model and
  its plaintext sha256 are the associated data of the data key's wrapping, and the header (digest, size, key) is the
  associated data of every segment, with the segment's number and a last-segment flag. So:
  - a byte altered at rest fails its segment's tag (refused, naming the file and the model);
  - a sealed file swapped in from another model, or moved to another path of the same model, fails the data key's
    unwrapping (its context is not the one asked for);
  - a truncated, reordered or extended file fails (segment numbers are nonces, the last one is flagged, the size is
    authenticated);
  - a file sealed under another key, or not sealed at all where the registry seals (a downgrade), is refused.
* Then the registry verifies the whole object as always (signature, every file's digest, attestations): encryption
  adds a refusal, it never replaces one.
* The key is the pipeline's and the serving side's, like the registry credentials; no sandbox receives it (the
  sandbox's environment is an allowlist), and it is never in the policy: the policy names a file, a variable or a
  token object.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from airlock.errors import RegistryError

MAGIC = b"AIRLOCK-SEALED\x00\x01"
SEGMENT = 1 << 20
_TAG = 16
_MAX_HEADER = 4096


class Kek(Protocol):
    """The registry key: wraps a data key for one context, unwraps it only for that context."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, dek: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...


@dataclass(frozen=True)
class SoftwareKek:
    """A 256-bit key read from a file or an environment variable (base64 or hex text)."""

    key: bytes
    key_id: str

    @classmethod
    def from_text(cls, text: str, where: str) -> SoftwareKek:
        t = text.strip()
        raw: bytes | None = None
        try:
            raw = bytes.fromhex(t) if len(t) == 64 else base64.b64decode(t, validate=True)
        except ValueError:
            raw = None
        if raw is None or len(raw) != 32:
            raise RegistryError(
                f"the registry encryption key in {where} is not 32 bytes of base64 or hex",
                "make one with: airlock registry keygen PATH",
            )
        return cls(raw, "sha256:" + hashlib.sha256(b"airlock-at-rest-key-id\0" + raw).hexdigest()[:16])

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, dek, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(self.key).decrypt(wrapped[:12], wrapped[12:], aad)
        except (InvalidTag, ValueError):
            raise _Undecryptable from None


class Pkcs11Kek:
    """An AES key inside a PKCS#11 token (``pkcs11:token=T;object=LABEL?module-path=/path/lib.so``); the PIN from
    the environment variable the policy names, never from the policy. The token wraps and unwraps; the key never
    leaves it."""

    def __init__(self, uri: str, pin_env: str) -> None:
        from urllib.parse import unquote

        import PyKCS11

        head, _, query = uri.partition("?")
        attrs = dict(p.split("=", 1) for p in head.removeprefix("pkcs11:").split(";") if "=" in p)
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        token, label, module = attrs.get("token"), attrs.get("object"), params.get("module-path")
        if not (token and label and module) or "pin-value" in params or "pin-source" in params:
            raise RegistryError(
                f"the registry key URI {head!r} needs token=, object= and ?module-path=, and no PIN",
                "e.g. pkcs11:token=airlock;object=registry-key?module-path=/usr/lib/softhsm/libsofthsm2.so",
            )
        pin = os.environ.get(pin_env)
        if not pin:
            raise RegistryError(f"no PIN for the registry key's token: ${pin_env} is not set", f"set {pin_env}")
        self._p11 = PyKCS11
        lib = PyKCS11.PyKCS11Lib()
        try:
            lib.load(unquote(module))
            slots = [
                s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == unquote(token)
            ]
            if not slots:
                raise RegistryError(f"no PKCS#11 token labelled {token!r}", "check the registry key URI")
            self._session = lib.openSession(slots[0])
            self._session.login(pin)
            keys = self._session.findObjects(
                [(PyKCS11.CKA_CLASS, PyKCS11.CKO_SECRET_KEY), (PyKCS11.CKA_LABEL, unquote(label))]
            )
        except PyKCS11.PyKCS11Error as e:
            raise RegistryError(
                f"cannot use the registry key's token: {e}", "check the URI, the PIN and the token"
            ) from None
        if len(keys) != 1:
            raise RegistryError(f"the token holds {len(keys)} secret keys labelled {label!r}", "name exactly one")
        self._lib, self._key = lib, keys[0]
        self.key_id = f"pkcs11:token={token};object={label}"

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        mech = self._p11.AES_GCM_Mechanism(nonce, aad, 128)
        return nonce + bytes(self._session.encrypt(self._key, dek, mech))

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        mech = self._p11.AES_GCM_Mechanism(wrapped[:12], aad, 128)
        try:
            return bytes(self._session.decrypt(self._key, wrapped[12:], mech))
        except self._p11.PyKCS11Error:
            raise _Undecryptable from None


class _Undecryptable(Exception):
    """A tag did not verify (internal: turned into a RegistryError that names the file)."""


def kek_from_policy(spec: str | Path | None, pin_env: str = "AIRLOCK_PKCS11_PIN") -> Kek | None:
    """``registry.encryption_key``: a file path, ``env:NAME``, or a ``pkcs11:`` URI; None: no encryption."""
    if spec is None:
        return None
    s = str(spec)
    if s.startswith("pkcs11:"):
        return Pkcs11Kek(s, pin_env)
    if s.startswith("env:"):
        name = s[4:]
        if not os.environ.get(name):
            raise RegistryError(f"the registry encryption key ${name} is not set", f"set {name} (base64, 32 bytes)")
        return SoftwareKek.from_text(os.environ[name], f"${name}")
    try:
        return SoftwareKek.from_text(Path(s).read_text(), s)
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(
            f"cannot read the registry encryption key {s}: {e}", "check registry.encryption_key"
        ) from None


def generate_key(path: Path) -> Path:
    """A new random registry key, base64, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


def is_sealed(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _wrap_aad(context: str, digest: str, size: int) -> bytes:
    return b"airlock-at-rest/v1\0dek\0" + json.dumps([context, digest, size]).encode()


def _nonce(i: int) -> bytes:
    return b"\0\0\0\0" + struct.pack(">Q", i)


class Sealer:
    """Seals and opens model files for one registry key. ``context`` names what a file is:
    ``<airlock digest>/<path in the model>``."""

    def __init__(self, kek: Kek) -> None:
        self.kek = kek

    @property
    def key_id(self) -> str:
        return self.kek.key_id

    def seal(self, src: Path, dst: Path, context: str) -> str:
        """Write the sealed form of ``src`` to ``dst`` (new); returns the plaintext's ``sha256:<hex>``."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        h, size = hashlib.sha256(), 0
        with open(src, "rb") as f:
            while chunk := f.read(SEGMENT):
                h.update(chunk)
                size += len(chunk)
        digest = f"sha256:{h.hexdigest()}"
        dek = os.urandom(32)
        wrapped = self.kek.wrap(dek, _wrap_aad(context, digest, size))
        header = json.dumps(
            {
                "v": 1,
                "alg": "AES-256-GCM",
                "segment": SEGMENT,
                "key": self.kek.key_id,
                "digest": digest,
                "size": size,
                "wrapped": base64.b64encode(wrapped).decode(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        head = MAGIC + struct.pack(">I", len(header)) + header
        bound = hashlib.sha256(head).digest()
        aead = AESGCM(dek)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
            out.write(head)
            count = max(1, -(-size // SEGMENT))
            for i in range(count):
                chunk = f.read(SEGMENT)
                out.write(aead.encrypt(_nonce(i), chunk, bound + struct.pack(">QB", i, i == count - 1)))
        return digest  # not fsynced here: the directory store fsyncs the object it commits

    def open(self, src: Path | BinaryIO, dst: Path, context: str) -> str:
        """Write the plaintext of the sealed ``src`` (a file, or a stream read once: a blob as it downloads) to
        ``dst`` (new); returns its ``sha256:<hex>``. Anything wrong is a RegistryError naming ``context``; ``dst``
        is then removed."""
        try:
            if isinstance(src, Path):
                with open(src, "rb") as f:
                    return self._open(f, dst, context)
            return self._open(src, dst, context)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise

    def _open(self, f: BinaryIO, dst: Path, context: str) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        what = f"{context.split('/', 1)[-1]} of model {context[:19]}…"
        altered = RegistryError(
            f"{what} does not decrypt: altered at rest, swapped in from another model, or truncated",
            "the registry was altered: do not use this model",
        )
        # A downgrade: a plain file where the registry seals was not put there by this registry.
        if f.read(len(MAGIC)) != MAGIC:
            raise RegistryError(f"{what} is stored unencrypted in a registry that encrypts", "the registry was altered")
        raw_len = f.read(4)
        (n,) = struct.unpack(">I", raw_len) if len(raw_len) == 4 else (_MAX_HEADER + 1,)
        header = f.read(n) if n <= _MAX_HEADER else b""
        try:
            meta = json.loads(header)
            digest, size, key = str(meta["digest"]), int(meta["size"]), str(meta["key"])
            wrapped = base64.b64decode(meta["wrapped"], validate=True)
            if meta.get("v") != 1 or int(meta["segment"]) != SEGMENT or size < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise altered from None
        # Sealed under another key: say so, rather than "altered" (key rotation, the wrong key file).
        if key != self.kek.key_id:
            raise RegistryError(
                f"{what} was encrypted with registry key {key}, not this machine's {self.kek.key_id}",
                "configure the registry key the models were stored with (registry.encryption_key)",
            )
        try:
            dek = self.kek.unwrap(wrapped, _wrap_aad(context, digest, size))
        except _Undecryptable:
            raise altered from None  # another model's file, another path, or an edited header
        bound = hashlib.sha256(MAGIC + raw_len + header).digest()
        aead, written = AESGCM(dek), 0
        count = max(1, -(-size // SEGMENT))
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            for i in range(count):
                want = min(SEGMENT, size - i * SEGMENT) + _TAG
                sealed = f.read(want)
                if len(sealed) != want:
                    raise altered
                try:
                    chunk = aead.decrypt(_nonce(i), sealed, bound + struct.pack(">QB", i, i == count - 1))
                except InvalidTag:
                    raise altered from None
                written += len(chunk)
                out.write(chunk)
            if f.read(1):  # bytes after the last segment
                raise altered
        # Every segment's tag held, each bound to the header (digest, size, key), the header to the data key, the data
        # key to this model and path: the plaintext is the file that was sealed as this one. (Its sha256 is
        # recomputed by the object's verification, with every other file's.)
        if written != size:
            raise altered
        return digest

    def seal_tree(self, model_dir: Path, airlock_digest: str) -> None:
        """Seal every file of a model directory in place (under the registry lock, before it is committed)."""
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(model_dir).as_posix()
            tmp = path.with_name(f".{path.name}.sealing")
            self.seal(path, tmp, f"{airlock_digest}/{rel}")
            os.replace(tmp, path)

    def open_tree(self, src: Path, dst: Path, airlock_digest: str) -> None:
        """The plaintext of a sealed model directory ``src`` into the new directory ``dst``."""
        dst.mkdir(parents=True)
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise RegistryError(
                    f"{rel} of model {airlock_digest[:19]}… is not a regular file", "the registry was altered"
                )
            if path.is_dir():
                (dst / rel).mkdir()
            else:
                self.open(path, dst / rel, f"{airlock_digest}/{rel}")
