"""The registry with an OCI registry as its store (``[registry] url = "oci://HOST:PORT/PREFIX"``).

The verification is the directory registry's own (:class:`registry.store.Registry`); only where objects, pointers
and records live changes:

* objects: ModelPack artifacts in ``PREFIX/staging`` and ``PREFIX/production`` (registry/oci.py), tagged
  ``m-<hex of the Airlock digest>``; promotion mounts the staging blobs into production (stored once) and attaches
  the approvals;
* pointers: a small artifact holding the pointer record (digest, run, time, approvers, ledger anchor), whose subject
  is the model's manifest, tagged ``latest`` (staging) and ``current`` (production). Moving that tag is the switch;
* records: the staging record of each run (``run-<id>``) and signed rejections (``rejected-<hex>``), the same way.

``registry.path`` is this machine's working directory: objects are fetched into a new directory there for every
check (every blob hashed on arrival, then the whole object verified), never read back from an earlier download; the
lock, the access log and the ledger stay on the machine that runs the pipeline.

Distribution 2.8 has no conditional tag update (``If-Match`` is ignored): writers are serialized by the registry
lock of the one machine that promotes. Give only that machine's credentials write access to ``PREFIX/production``
(token auth, Harbor robot accounts; htpasswd gives every user every repository): docs/policy.md.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import weakref
from pathlib import Path

from airlock.errors import RegistryError
from registry import oci
from registry.store import Registry, _hex

POINTER = "application/vnd.airlock.pointer.v1+json"
RECORD = "application/vnd.airlock.record.v1+json"
_POINTER_TAG = {"staging": "latest", "production": "current"}


class OciRegistry(Registry):
    def __init__(self, location: oci.Location, client: oci.Client, cache: str | Path, *args, **kw) -> None:
        super().__init__(cache, *args, **kw)
        self.location, self.client = location, client
        self._pulls = Path(cache) / "pulls" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        weakref.finalize(self, shutil.rmtree, str(self._pulls), True)

    @property
    def where(self) -> str:
        return f"{self.location.base}/{self.location.prefix}"

    def _repo(self, stage: str) -> str:
        return self.location.repo(stage)

    # -- objects -----------------------------------------------------------------------------------------------

    def _manifest_digest(self, stage: str, digest: str) -> str | None:
        got = self.client.get_manifest(self._repo(stage), f"m-{_hex(digest)}", ok_missing=True)
        return oci._sha(got[0]) if got else None

    def _where_object(self, stage: str, digest: str) -> str:
        return f"{self.location.base}/{self._repo(stage)}:m-{_hex(digest)}"

    def _obj(self, stage: str, digest: str) -> Path:
        """The object fetched afresh into a new directory (…/<stage>/<hex>, so that verification knows its stage)."""
        manifest = self._manifest_digest(stage, digest)
        if manifest is None:
            raise RegistryError(f"no model {digest[:23]}… in {stage} at {self.where}", "check the digest and the stage")
        dest = self._pull_dir() / uuid.uuid4().hex / stage / _hex(digest)
        oci.pull_object(self.client, self._repo(stage), manifest, dest, self.sealer)
        return dest

    def holds(self, stage: str, digest: str) -> bool:
        return self._manifest_digest(stage, digest) is not None

    def objects(self) -> list[tuple[str, str, Path]]:
        out = []
        for stage in ("staging", "production"):
            r = self.client._req("GET", f"/v2/{self._repo(stage)}/tags/list", ok=(200, 404))
            tags = (r.json().get("tags") or []) if r.status_code == 200 else []
            for t in sorted(tags):
                if isinstance(t, str) and t.startswith("m-") and len(t) == 66:
                    digest = f"sha256:{t[2:]}"
                    out.append((stage, digest, self._obj(stage, digest)))
        return out

    def _commit_staged(self, tmp: Path, digest: str) -> Path:
        """Push the verified object (its model files sealed on the way, with encryption at rest) unless staging
        already holds it and it verifies: a model is pushed once, so its manifest digest never changes. The local
        copy moves into this process's pulls: nothing is kept in the working directory."""
        if self.holds("staging", digest):
            try:
                found = self.verify_object(self._obj("staging", digest), digest)
                shutil.rmtree(tmp)
                return found.path
            except RegistryError as e:
                # What staging holds under that tag does not verify (altered at rest): the verified object is pushed
                # over it, and what was found is recorded first, so the evidence of the tampering is not lost.
                self.ledger.append(
                    "registry.restaged",
                    {"digest": digest, "found": e.what, "reason": "staging held an object that does not verify"},
                )
        repo = self._repo("staging")
        m = oci.push_object(self.client, repo, tmp, digest, self.sealer, scratch=self._pull_dir())
        got = self.client.get_manifest(repo, m)
        assert got is not None
        self.client.put_manifest(repo, f"m-{_hex(digest)}", got[0], oci.MANIFEST)
        dest = self._pull_dir() / uuid.uuid4().hex / "staging" / _hex(digest)
        dest.parent.mkdir(parents=True)
        os.rename(tmp, dest)
        return dest

    def _commit_promoted(self, digest: str, approvals: bytes) -> None:
        """Promotion by digest (registry/oci.py): the staging blobs mounted, the manifest, its referrers and the
        approvals in production, the model's tag last; then production's object is fetched and verified before
        the caller moves the pointer."""
        source = self._manifest_digest("staging", digest)
        if source is None:
            raise RegistryError(f"{digest[:23]}… is not in staging at {self.where}", "stage it first")
        self._pull_dir().mkdir(parents=True, exist_ok=True)
        record = self._pull_dir() / f"approvals-{uuid.uuid4().hex}.json"
        record.write_bytes(approvals)
        try:
            oci.promote(
                self.client, self._repo("staging"), self._repo("production"), source, record, tag=f"m-{_hex(digest)}"
            )
        finally:
            record.unlink()
        self.verify_object(self._obj("production", digest), digest)

    # -- pointers and records: small JSON artifacts ------------------------------------------------------------

    def _small_read(self, stage: str, tag: str, artifact_type: str):
        got = self.client.get_manifest(self._repo(stage), tag, ok_missing=True)
        if got is None:
            return None
        doc = json.loads(got[0])
        layers = doc.get("layers") or []
        if doc.get("artifactType") != artifact_type or len(layers) != 1:
            raise RegistryError(f"{tag} in {self._repo(stage)} is not an Airlock record", "the registry was altered")
        try:
            return json.loads(self.client.blob_bytes(self._repo(stage), str(layers[0].get("digest")), 1 << 20))
        except ValueError:
            raise RegistryError(f"{tag} in {self._repo(stage)} is not JSON", "the registry was altered") from None

    def _small_write(self, stage: str, tag: str, artifact_type: str, record: dict, subject: str | None) -> None:
        repo = self._repo(stage)
        data = oci.canonical(record)
        layer = {"mediaType": artifact_type, "digest": oci._sha(data), "size": len(data)}
        about = None
        if subject is not None:
            got = self.client.get_manifest(repo, subject)
            assert got is not None
            about = {"mediaType": oci.MANIFEST, "digest": subject, "size": len(got[0])}
        _, body = self.client.push_artifact(repo, artifact_type, [(layer, data)], about)
        self.client.put_manifest(repo, tag, body, oci.MANIFEST)  # the tag moves last

    def _pointer_read(self, stage: str):
        return self._small_read(stage, _POINTER_TAG[stage], POINTER)

    def _pointer_write(self, stage: str, record: dict) -> None:
        subject = self._manifest_digest(stage, record["digest"])
        self._small_write(stage, _POINTER_TAG[stage], POINTER, record, subject)

    def _record_read(self, kind: str, key: str, exists_only: bool = False):
        tag = f"{'run' if kind == 'runs' else kind}-{key}"
        if exists_only:
            return True if self.client.get_manifest(self._repo("staging"), tag, ok_missing=True) else None
        return self._small_read("staging", tag, RECORD)

    def _record_write(self, kind: str, key: str, record: dict) -> None:
        self._small_write("staging", f"{'run' if kind == 'runs' else kind}-{key}", RECORD, record, None)


def from_policy(
    pol, ledger, public_key, approvers, revoked_keys, approval_policy, root=None, sealer=None
) -> OciRegistry:
    r = pol.registry
    loc = oci.Location.parse(r.url)
    user, password = os.environ.get(r.username_env), os.environ.get(r.password_env)
    client = oci.Client(loc.base, auth=(user, password) if user and password else None, ca=r.ca)
    return OciRegistry(
        loc,
        client,
        root or r.path,
        ledger,
        public_key,
        approvers,
        revoked_keys,
        approval_policy=approval_policy,
        sealer=sealer,
    )
