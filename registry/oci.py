"""An OCI registry as model storage: a thin client for the distribution API, and a registry object as a CNCF
ModelPack artifact with its signature, attestations and approvals attached as referrers.

Layout in the OCI registry (``oci://HOST:PORT/PREFIX``): repositories ``PREFIX/staging`` and ``PREFIX/production``.

* The model: an image manifest with ``artifactType`` ``application/vnd.cncf.model.manifest.v1+json``, a ModelPack
  config, and **one raw layer per file** of the signed model directory, annotated with its path
  (``org.cncf.model.filepath``). A layer's digest is the file's sha256, i.e. the digest model_signing signed for
  that file: :func:`check_against_signature` compares a manifest with a signature before anything is downloaded.
  Manifests are canonical JSON with no timestamp, so the same model always has the same manifest digest.
* Its model_signing bundle (cosign's layout: ``artifactType`` the Sigstore bundle type, an empty config, one layer),
  its signed attestations (one layer per statement plus the signature) and, in production, its approvals: each an
  artifact whose ``subject`` is the model's manifest. Distribution 2.8 has no referrers API; where the server has
  none (detected at run time: ``GET /v2/<repo>/referrers/<digest>`` is not 200), the referrers are listed in an
  image index tagged ``sha256-<hex>`` (the OCI 1.1 fallback), rewritten by one writer at a time.

Security rules:
* Nothing fetched is believed until it is hashed: every manifest fetched by digest and every blob is hashed while it
  streams in, written under a temporary name and renamed only when its digest matches; a mismatch is refused by name.
* Paths come from annotations, i.e. from whoever wrote the manifest: only canonical relative names inside the model
  directory are accepted (no ``..``, no absolute path, no duplicate, nothing outside the layout of airlock/modeldir.py).
* With encryption at rest (registry/atrest.py), every layer of the model is sealed before it leaves the machine:
  its media type ends ``+encrypted``, its digest is the sealed blob's, its ``org.airlock.plaintext.digest`` the
  file's (the ModelPack config's ``diffIds`` are those). A plain layer where the registry encrypts is refused.
* Storage decides nothing. A pulled object is a directory like the local registry's, and it is judged by the same
  :meth:`registry.store.Registry.verify_object` (signature, signer policy, digest, attestations) before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from airlock.errors import RegistryError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MODEL = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
ATTESTATIONS = "application/vnd.airlock.attestations.v1"
APPROVALS = "application/vnd.airlock.approvals.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
FILEPATH = "org.cncf.model.filepath"
AIRLOCK_DIGEST = "org.airlock.model.digest"
PLAINTEXT = "org.airlock.plaintext.digest"  # a sealed layer's plaintext sha256 (encryption at rest)
SEALED = "+encrypted"  # suffix of a sealed layer's media type (as ocicrypt's layers)
_EMPTY_BLOB = b"{}"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_MANIFEST = 4 << 20
MAX_SMALL_BLOB = 64 << 20  # signatures, statements, approvals


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Location:
    """``oci://HOST:PORT/PREFIX`` (``oci+http://`` for a plain-HTTP registry, tests and loopback only)."""

    base: str  # https://host:port
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Location:
        u = urlsplit(url)
        scheme = {"oci": "https", "oci+https": "https", "oci+http": "http"}.get(u.scheme)
        prefix = u.path.strip("/")
        if scheme is None or not u.netloc or not re.match(r"^[a-z0-9]+([._/-][a-z0-9]+)*$", prefix):
            raise RegistryError(
                f"{url!r} is not an OCI registry location", "write oci://HOST[:PORT]/PREFIX (lower case)"
            )
        return cls(f"{scheme}://{u.netloc}", prefix)

    def repo(self, stage: str) -> str:
        return f"{self.prefix}/{stage}"


class Client:
    """The distribution API calls Airlock needs, each a one-line RegistryError when the server says no."""

    def __init__(self, base: str, auth: tuple[str, str] | None = None, ca: Path | None = None) -> None:
        import requests

        self.base = base.rstrip("/")
        self.session = requests.Session()
        self.session.auth = auth
        # Per request, not Session.verify: REQUESTS_CA_BUNDLE in the environment would override the session's.
        self.verify: str | bool = str(ca) if ca else True

    def _req(self, method: str, path: str, ok=(200,), **kw):
        import requests

        url = path if path.startswith("http") else f"{self.base}{path}"
        try:
            r = self.session.request(method, url, verify=self.verify, timeout=300, **kw)
        except requests.RequestException as e:
            raise RegistryError(
                f"the OCI registry {self.base} cannot be reached: {type(e).__name__}",
                "check registry.path and the server",
            ) from None
        if r.status_code not in ok:
            detail = " ".join(r.text.split())[:160]
            raise RegistryError(
                f"the OCI registry refused {method} {urlsplit(url).path}: HTTP {r.status_code} {detail}",
                "check the credentials and that the repository exists",
            )
        return r

    # -- blobs -------------------------------------------------------------------------------------------------

    def has_blob(self, repo: str, digest: str) -> bool:
        return self._req("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404)).status_code == 200

    def push_blob(self, repo: str, digest: str, data: bytes | Path) -> None:
        if self.has_blob(repo, digest):
            return
        start = self._req("POST", f"/v2/{repo}/blobs/uploads/", ok=(202,))
        loc = start.headers["Location"]
        loc = loc if loc.startswith("http") else f"{self.base}{loc}"
        sep = "&" if "?" in loc else "?"
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, Path):
            with open(data, "rb") as f:  # streamed, never read whole into memory
                headers["Content-Length"] = str(os.fstat(f.fileno()).st_size)
                self._req("PUT", f"{loc}{sep}digest={digest}", ok=(201,), data=f, headers=headers)
        else:
            self._req("PUT", f"{loc}{sep}digest={digest}", ok=(201,), data=data, headers=headers)

    def mount(self, repo: str, digest: str, source: str) -> bool:
        """Cross-repository mount (promotion: the blobs are stored once); False if the server made an upload."""
        r = self._req("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", ok=(201, 202))
        return r.status_code == 201

    def fetch_blob(self, repo: str, digest: str, dest: Path) -> None:
        """Stream a blob to ``dest``, hashing as it comes; renamed into place only if its digest matches."""
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        h = hashlib.sha256()
        with self._req("GET", f"/v2/{repo}/blobs/{digest}", stream=True) as r, open(tmp, "wb") as out:
            for chunk in r.iter_content(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            tmp.unlink()
            raise RegistryError(
                f"the OCI blob {digest[:19]}… for {dest.name} does not match its digest (got sha256:{h.hexdigest()[:12]}…)",
                "the registry's storage was altered: do not use this model",
            )
        os.replace(tmp, dest)

    @contextlib.contextmanager
    def blob_stream(self, repo: str, digest: str):
        """A blob as a stream read once (a sealed layer is opened as it arrives, never written out sealed), hashed
        as it is read: after the body, the whole blob is read to its end and refused unless it matches ``digest``."""
        with self._req("GET", f"/v2/{repo}/blobs/{digest}", stream=True) as r:
            reader = _HashingReader(r.iter_content(1 << 20))
            yield reader
            reader.drain()
        if reader.digest() != digest:
            raise RegistryError(
                f"the OCI blob {digest[:19]}… does not match its digest (got {reader.digest()[:19]}…)",
                "the registry's storage was altered: do not use this model",
            )

    def blob_bytes(self, repo: str, digest: str, limit: int = MAX_SMALL_BLOB) -> bytes:
        r = self._req("GET", f"/v2/{repo}/blobs/{digest}")
        data = r.content
        if len(data) > limit or _sha(data) != digest:
            raise RegistryError(
                f"the OCI blob {digest[:19]}… does not match its digest", "the registry's storage was altered"
            )
        return data

    # -- manifests ---------------------------------------------------------------------------------------------

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        digest = _sha(body)
        r = self._req("PUT", f"/v2/{repo}/manifests/{ref}", ok=(201,), data=body, headers={"Content-Type": media_type})
        if r.headers.get("Docker-Content-Digest", digest) != digest:
            raise RegistryError("the OCI registry stored a different manifest than sent", "check the server")
        return digest

    def get_manifest(self, repo: str, ref: str, ok_missing: bool = False) -> tuple[bytes, str] | None:
        accept = ", ".join((MANIFEST, INDEX))
        r = self._req("GET", f"/v2/{repo}/manifests/{ref}", ok=(200, 404), headers={"Accept": accept})
        if r.status_code == 404:
            if ok_missing:
                return None
            raise RegistryError(f"no manifest {ref[:23]} in {repo}", "check the digest and the stage")
        body = r.content
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"the manifest {ref[:23]} in {repo} is too large", "the registry was altered")
        # Fetched by digest: its bytes must hash to it (a server or a proxy swapping manifests is caught here).
        if _DIGEST.match(ref) and _sha(body) != ref:
            raise RegistryError(f"the manifest {ref[:23]}… in {repo} does not match its digest", "do not use it")
        return body, r.headers.get("Content-Type", "")

    def referrers(self, repo: str, digest: str) -> list[dict]:
        """The artifacts whose subject is ``digest``: the referrers API where the server has one, else the
        ``sha256-<hex>`` tag fallback."""
        r = self._req("GET", f"/v2/{repo}/referrers/{digest}", ok=(200, 404, 400, 405))
        if r.status_code == 200 and r.headers.get("Content-Type", "").startswith(INDEX):
            return list(json.loads(r.content).get("manifests") or [])
        got = self.get_manifest(repo, _fallback_tag(digest), ok_missing=True)
        return list(json.loads(got[0]).get("manifests") or []) if got else []

    def push_artifact(
        self, repo: str, artifact_type: str, layers: Sequence[tuple[dict, bytes | Path]], subject: dict | None = None
    ) -> tuple[str, bytes]:
        """An artifact manifest (empty config, these layers, an optional subject) and its blobs, pushed by digest."""
        self.push_blob(repo, _sha(_EMPTY_BLOB), _EMPTY_BLOB)
        for desc, data in layers:
            self.push_blob(repo, desc["digest"], data)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY, "digest": _sha(_EMPTY_BLOB), "size": len(_EMPTY_BLOB)},
            "layers": [d for d, _ in layers],
        }
        if subject is not None:
            manifest["subject"] = subject
        body = canonical(manifest)
        return self.put_manifest(repo, _sha(body), body, MANIFEST), body

    def attach(self, repo: str, subject: dict, artifact_type: str, layers: Sequence[tuple[dict, bytes | Path]]) -> str:
        """Push an artifact whose subject is ``subject`` and list it in the fallback index."""
        digest, body = self.push_artifact(repo, artifact_type, layers, subject)
        entry = {"mediaType": MANIFEST, "digest": digest, "size": len(body), "artifactType": artifact_type}
        existing = self.referrers(repo, subject["digest"])
        # A promotion again: its approvals replace the earlier ones (one approvals record per model).
        keep = [
            m
            for m in existing
            if m.get("digest") != digest and not (artifact_type == APPROVALS and m.get("artifactType") == APPROVALS)
        ]
        if [*keep, entry] != existing:
            index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [*keep, entry]}
            ib = canonical(index)
            self.put_manifest(repo, _fallback_tag(subject["digest"]), ib, INDEX)
        return digest


class _HashingReader:
    """``read(n)`` over an iterator of chunks, hashing every byte that arrives."""

    def __init__(self, chunks) -> None:
        self._chunks, self._buf, self._h = chunks, bytearray(), hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._h.update(chunk)
            self._buf += chunk
        if n < 0:
            n = len(self._buf)
        out = bytes(memoryview(self._buf)[:n])
        del self._buf[:n]
        return out

    def drain(self) -> None:
        for chunk in self._chunks:
            self._h.update(chunk)

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


def _fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


# -- a registry object <-> an OCI artifact ---------------------------------------------------------------------


def _media_type(rel: str) -> str:
    if rel == "model.safetensors":
        return WEIGHT
    if rel == "training.json":
        return WEIGHT_CONFIG
    return DOC


def _files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = Path(d, f)
            out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _layer(rel: str, path: Path, media_type: str) -> tuple[dict, Path]:
    from airlock.hashing import sha256_file

    hexd, size = sha256_file(path)
    return {"mediaType": media_type, "digest": f"sha256:{hexd}", "size": size, "annotations": {FILEPATH: rel}}, path


def _sealed_layer(rel: str, path: Path, sealer, airlock_digest: str, scratch: Path) -> tuple[dict, Path]:
    out = scratch / f"{uuid.uuid4().hex}.sealed"
    plain = sealer.seal(path, out, f"{airlock_digest}/{rel}")
    desc, _ = _layer(rel, out, _media_type(rel) + SEALED)
    desc["annotations"][PLAINTEXT] = plain
    return desc, out


def _plain_digest(desc: dict) -> str:
    return str((desc.get("annotations") or {}).get(PLAINTEXT) or desc.get("digest", ""))


def model_manifest(
    obj: Path, airlock_digest: str, sealer=None, scratch: Path | None = None
) -> tuple[bytes, list[tuple[dict, Path]], bytes]:
    """(manifest bytes, its layers with their files, config bytes) of the object's model directory: canonical
    (sealed layers are not reproducible: a model is pushed once)."""
    if sealer is not None:
        assert scratch is not None
        scratch.mkdir(parents=True, exist_ok=True)
        layers = [_sealed_layer(rel, p, sealer, airlock_digest, scratch) for rel, p in _files(obj / "model")]
    else:
        layers = [_layer(rel, p, _media_type(rel)) for rel, p in _files(obj / "model")]
    config = canonical(
        {
            "descriptor": {"name": "airlock-model", "version": airlock_digest},
            "modelfs": {"type": "layers", "diffIds": [_plain_digest(d) for d, _ in layers]},
            "config": {},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": MODEL,
        "config": {"mediaType": MODEL_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [d for d, _ in layers],
        "annotations": {AIRLOCK_DIGEST: airlock_digest},
    }
    return canonical(manifest), layers, config


def push_object(
    client: Client, repo: str, obj: Path, airlock_digest: str, sealer=None, scratch: Path | None = None
) -> str:
    """Push a (verified) registry object, its model files sealed by ``sealer`` if given (sealed copies in
    ``scratch``, removed after the push); returns the model manifest's digest. Tag-free: tags are the caller's."""
    body, layers, config = model_manifest(obj, airlock_digest, sealer, scratch)
    client.push_blob(repo, _sha(config), config)
    for desc, path in layers:
        client.push_blob(repo, desc["digest"], path)
        if sealer is not None:
            path.unlink()
    digest = client.put_manifest(repo, _sha(body), body, MANIFEST)
    subject = {"mediaType": MANIFEST, "digest": digest, "size": len(body)}
    client.attach(repo, subject, BUNDLE, [_layer("model.sig", obj / "model.sig", BUNDLE)])
    att = [_layer(f"attestations/{rel}", p, "application/vnd.in-toto+json") for rel, p in _files(obj / "attestations")]
    att.append(_layer("attestations.sig", obj / "attestations.sig", BUNDLE))
    client.attach(repo, subject, ATTESTATIONS, att)
    if (obj / "approvals.json").is_file():
        client.attach(repo, subject, APPROVALS, [_layer("approvals.json", obj / "approvals.json", APPROVALS)])
    return digest


def promote(
    client: Client, source: str, target: str, digest: str, approvals: Path | None = None, tag: str = "current"
) -> str:
    """Promotion by digest: every blob mounted from ``source`` (stored once), the manifest PUT by digest, its
    signature and attestations copied as referrers, the approvals attached, and the tag moved LAST, so a crash at
    any point leaves the tag on the old model. Digests never change: production serves the bytes staging verified.
    The caller has verified the model and its approvals first."""
    got = client.get_manifest(source, digest)
    assert got is not None
    body, _ = got
    manifest = json.loads(body)
    for desc in [manifest["config"], *manifest.get("layers", [])]:
        if not client.mount(target, desc["digest"], source):  # a server without mounts: copy the blob
            client.push_blob(target, desc["digest"], client.blob_bytes(source, desc["digest"], limit=1 << 40))
    client.put_manifest(target, digest, body, MANIFEST)
    subject = {"mediaType": MANIFEST, "digest": digest, "size": len(body)}
    for ref in client.referrers(source, digest):
        if ref.get("artifactType") not in (BUNDLE, ATTESTATIONS):
            continue
        art = client.get_manifest(source, str(ref["digest"]))
        assert art is not None
        doc = json.loads(art[0])
        layers = [(d, client.blob_bytes(source, d["digest"])) for d in doc.get("layers") or []]
        client.attach(target, subject, str(ref["artifactType"]), layers)
    if approvals is not None:
        client.attach(target, subject, APPROVALS, [_layer("approvals.json", approvals, APPROVALS)])
    client.put_manifest(target, tag, body, MANIFEST)  # the one switch
    return digest


def _safe(rel: object, allowed_top: tuple[str, ...]) -> str:
    """A path from an annotation: canonical, relative, inside one of the object's parts."""
    p = PurePosixPath(str(rel))
    if (
        not isinstance(rel, str)
        or not rel
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in rel.split("/"))
        or p.as_posix() != rel
        or any(ord(c) < 32 for c in rel)
        or p.parts[0] not in allowed_top
    ):
        raise RegistryError(f"the OCI artifact names the path {str(rel)[:60]!r}", "the registry was altered: refuse it")
    return rel


def pull_object(client: Client, repo: str, digest: str, dest: Path, sealer=None) -> str:
    """Fetch the model artifact ``digest`` and its referrers into ``dest`` (a new directory laid out like a local
    registry object), every byte hashed on arrival, sealed layers opened by ``sealer``. Before any model layer is
    downloaded, its layers must be the files the signature names. Returns the Airlock digest the manifest claims;
    the caller verifies the object (Registry.verify_object) before using anything in it."""
    got = client.get_manifest(repo, digest)
    assert got is not None
    manifest = json.loads(got[0])
    if manifest.get("artifactType") != MODEL:
        raise RegistryError(f"{digest[:23]}… in {repo} is not a model artifact", "check the digest")
    claimed = (manifest.get("annotations") or {}).get(AIRLOCK_DIGEST)
    if not isinstance(claimed, str) or not _DIGEST.match(claimed):
        raise RegistryError(f"the model artifact {digest[:23]}… names no Airlock digest", "the registry was altered")
    dest.mkdir(parents=True)
    seen: set[str] = set()

    def fetch(desc: dict, top: tuple[str, ...], base: Path, opened: bool = False) -> None:
        rel = _safe((desc.get("annotations") or {}).get(FILEPATH), top)
        if rel in seen or not _DIGEST.match(str(desc.get("digest"))):
            raise RegistryError(f"the OCI artifact lists {rel} twice or without a digest", "the registry was altered")
        seen.add(rel)
        target = base / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        sealed = str(desc.get("mediaType", "")).endswith(SEALED)
        if not opened or (sealer is None and not sealed):
            client.fetch_blob(repo, desc["digest"], target)
            return
        if sealer is None:
            raise RegistryError(
                f"{rel} of model {claimed[:19]}… is encrypted and no registry key is configured",
                "set registry.encryption_key to the key the models were stored with",
            )
        if not sealed:  # a downgrade: a plain layer where this registry encrypts
            raise RegistryError(
                f"{rel} of model {claimed[:19]}… is stored unencrypted in a registry that encrypts",
                "the registry was altered",
            )
        try:
            with client.blob_stream(repo, desc["digest"]) as stream:  # opened as it arrives; then its digest
                sealer.open(stream, target, f"{claimed}/{rel}")
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    refs = [r for r in client.referrers(repo, digest) if r.get("artifactType") in (BUNDLE, ATTESTATIONS, APPROVALS)]
    refs.sort(key=lambda r: r.get("artifactType") != BUNDLE)  # the signature first: checked before the model's bytes
    model = dest / "model"
    model.mkdir()
    for ref in refs:
        kind = ref.get("artifactType")
        if kind not in (BUNDLE, ATTESTATIONS, APPROVALS):
            continue  # someone else's referrer (a scanner's report, say): not part of the object
        art = client.get_manifest(repo, str(ref.get("digest")))
        assert art is not None
        doc = json.loads(art[0])
        if (doc.get("subject") or {}).get("digest") != digest:
            raise RegistryError("a referrer names another subject", "the registry was altered")
        tops = {
            BUNDLE: ("model.sig",),
            ATTESTATIONS: ("attestations", "attestations.sig"),
            APPROVALS: ("approvals.json",),
        }
        for desc in doc.get("layers") or []:
            fetch(desc, tops[kind], dest)
        if kind == BUNDLE and (dest / "model.sig").is_file():
            # Layers that are not the signed files (swapped, added, dropped) are refused before a byte of them comes.
            check_against_signature(got[0], (dest / "model.sig").read_bytes())
    if not (dest / "model.sig").is_file():
        raise RegistryError(f"the model artifact {digest[:23]}… in {repo} has no signature", "the registry was altered")
    for desc in manifest.get("layers") or []:
        fetch(
            desc, ("model.safetensors", "training.json", "provenance.json", "aibom.cdx.json", "evidence"), model, True
        )
    return claimed


def check_against_signature(manifest: bytes, bundle: bytes) -> None:
    """Before any download: the manifest's layers are exactly the files and digests model_signing signed."""
    import base64

    try:
        payload = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
        signed = {r["name"]: r["digest"] for r in payload["predicate"]["resources"]}
        layers = {
            (d.get("annotations") or {}).get(FILEPATH): _plain_digest(d).removeprefix("sha256:")
            for d in json.loads(manifest).get("layers") or []
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RegistryError("the signature or the manifest cannot be read", "the registry was altered") from None
    if layers != signed:
        odd = sorted(str(k) for k in set(layers) | set(signed) if layers.get(k) != signed.get(k))
        raise RegistryError(
            f"the manifest's layers are not the signed files: {', '.join(odd[:5])}",
            "the registry was altered: do not use this model",
        )
