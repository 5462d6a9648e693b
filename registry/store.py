"""A filesystem model registry that verifies what it is asked to hold.

Layout under the registry root::

    staging/<hex>/model/...        the signed model directory (weights, metadata, provenance, gate evidence)
    staging/<hex>/model.sig        its model_signing bundle (kept outside the directory it signs)
    staging/runs/<run_id>.json     which model a run staged
    staging/rejected/<hex>.json    a signed rejection: this model is never promoted
    production/<hex>/...           the same, plus approvals.json (the signed approvals and the policy they met)
    production/CURRENT             {"digest", "run_id", "promoted_at", "ledger_anchor"}: the production pointer

Rules:
* Nothing enters staging unless its signature verifies with the trusted model-signing key and its digest (over
  every file, see :mod:`airlock.hashing`) is recomputed.
* Promotion re-verifies, from the trust files and never from the model: the signature, the digest, and approvals
  bound to this run and this digest that meet the approval policy (:mod:`airlock.approvals`: roles by different
  people, separation of duties, expiry). The policy is the registry's own, built from the trust roots: no caller
  passes a quorum or a flag. A model with a valid signed rejection is marked rejected and can never be promoted.
* Promotion is crash-safe: the production object is written under a temporary name, verified, renamed into place,
  and only then is CURRENT replaced atomically (``os.replace``). A crash leaves the old or the new production model,
  never a mix.
* One writer at a time (a ``flock`` on ``.lock``): concurrent promotions and stagings are serialized, and every
  temporary found when the lock is taken was left by a crash; it is removed and the removal recorded. A crash after
  the production switch and before its ledger entry is recorded as ``registry.promote.recovered`` by the next
  promotion or ``airlock registry repair``; ``airlock verify`` says so until then.
* Every write goes to the tamper-evident ledger; CURRENT keeps the ledger anchor written just before the move, so a
  truncated ledger is detected by ``airlock verify``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from airlock import approvals as _approvals
from airlock import attest, modeldir, modelsign, verification
from airlock.errors import AirlockError, RegistryError
from airlock.hashing import hash_tree
from airlock.ledger import Anchor, Ledger
from airlock.policy import Policy
from registry import atrest
from registry.access import AccessLog

STAGES = ("staging", "production")


@dataclass(frozen=True)
class StagedModel:
    digest: str
    path: Path  # the object directory
    provenance: dict
    # The registry it came from: a fetched or decrypted object lives in that registry's pulls, removed with it, so
    # the model keeps its registry alive for as long as the model is used.
    owner: object = field(default=None, compare=False, repr=False)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def signature(self) -> Path:
        return self.path / "model.sig"


def _hex(digest: str) -> str:
    if not digest.startswith("sha256:") or len(digest) != 71 or not all(c in "0123456789abcdef" for c in digest[7:]):
        raise RegistryError(f"malformed model digest {digest!r}", "digests look like sha256:<64 hex>")
    return digest[7:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


class Registry:
    def __init__(
        self,
        root: str | Path,
        ledger: Ledger,
        public_key: str | Path,
        approvers_file: str | Path,
        revoked_keys: str | Path | None = None,
        approval_policy: _approvals.Policy = _approvals.Policy(),
        sealer: atrest.Sealer | None = None,
    ) -> None:
        self.approval_policy = approval_policy
        self.sealer = sealer  # encryption at rest of the model files (registry/atrest.py); None: stored plain
        self._pulls: Path | None = None
        self.root = Path(root)
        self.ledger = ledger
        self.public_key = Path(public_key)
        self.approvers_file = Path(approvers_file)
        self.revoked_keys = Path(revoked_keys) if revoked_keys else None

    @property
    def access(self) -> AccessLog:
        return AccessLog(self.root)

    @contextlib.contextmanager
    def _logged(self, op: str, **what):
        """Record the access in the access log (registry/access.py): ``op`` if it succeeds, ``refused`` (with the
        reason) if it raises a refusal. The body may add what it learnt (the digest) to the dict it is given."""
        details: dict = dict(what)
        try:
            yield details
        except RegistryError as e:
            self.access.record("refused", action=op, reason=e.what, **details)
            raise
        self.access.record(op, **details)

    @contextlib.contextmanager
    def _exclusive(self):
        """One writer at a time (stage, promote, reject, repair), across processes: a second promotion of the same
        digest waits and then finds it done, instead of racing the first one's rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self._sweep()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Temporaries are only ever made under the lock: any found when it is taken were left by a crash. They are
        removed, and the removal recorded."""
        stale = [
            p
            for stage in STAGES
            if (self.root / stage).is_dir()
            for p in (self.root / stage).iterdir()
            if p.name.startswith(".") and p.name.endswith(".tmp")
        ]
        for kind in ("runs", "rejected"):
            if (self.root / "staging" / kind).is_dir():
                stale += [p for p in (self.root / "staging" / kind).iterdir() if p.name.endswith(".tmp")]
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        if stale:
            self.ledger.append(
                "registry.swept",
                {"removed": sorted(str(p.relative_to(self.root)) for p in stale), "reason": "left by a crash"},
            )

    def interrupted_promotion(self) -> dict | None:
        """A production pointer whose promotion has no ``registry.promote`` entry: the process died after the
        switch and before recording it (the switch itself happened only after every check). None if complete."""
        ptr = self.current_pointer("production")
        if ptr is None:
            return None
        anchor = (ptr.get("ledger_anchor") or {}).get("seq")
        for e in self.ledger.entries():
            if (
                e["kind"] in ("registry.promote", "registry.promote.recovered")
                and isinstance(anchor, int)
                and e["seq"] > anchor
                and (e.get("data") or {}).get("digest") == ptr["digest"]
            ):
                return None
        return ptr

    def repair(self) -> list[str]:
        """Finish what a crash left: stale temporaries removed (and recorded), an unrecorded promotion recorded."""
        done = []
        with self._exclusive():
            ptr = self.interrupted_promotion()
            if ptr is not None:
                self.verify_stage("production")  # record only what verifies
                self.ledger.append(
                    "registry.promote.recovered",
                    {
                        "digest": ptr["digest"],
                        "approvers": ptr.get("approvers"),
                        "reason": "production was switched and the promotion not recorded (a crash in between)",
                    },
                    run_id=ptr.get("run_id"),
                )
                done.append(f"recorded the interrupted promotion of {ptr['digest'][:23]}…")
        self.access.record("repair", done=done)
        return done

    @classmethod
    def from_policy(
        cls, pol: Policy, ledger: Ledger | None = None, root: str | Path | None = None, roots=None
    ) -> Registry:
        """The registry named by a policy whose trust roots were pinned (airlock.trust.pin), or judged by ``roots``
        (the trust roots in force now, at promotion). With ``registry.url``, an OCI registry is its store."""
        t = roots or pol.trust
        args = (
            ledger or Ledger.from_policy(pol),
            t.model_signing_public_key,
            t.approvers,
            t.revoked_keys,
            _approvals.Policy.from_policy(pol.approval),
        )
        kek = atrest.kek_from_policy(pol.registry.encryption_key, pol.registry.encryption_pin_env)
        sealer = atrest.Sealer(kek) if kek else None
        if pol.registry.url and root is None:
            from registry import oci_registry

            return oci_registry.from_policy(pol, *args, sealer=sealer)
        return cls(root or pol.registry.path, *args, sealer=sealer)

    # -- verification ------------------------------------------------------------------------------------------

    def verify_object(self, obj: Path, digest: str | None = None) -> StagedModel:
        """Signature by the trusted key, digest over every file, readable provenance. Raises RegistryError."""
        model_dir, sig = obj / "model", obj / "model.sig"
        if not model_dir.is_dir():
            raise RegistryError(
                f"registry object {obj} has no model directory", "the registry was altered: re-run the pipeline"
            )
        # Smuggled files: an object holds only its model directory, signature and approvals, and the directory only
        # the layout Airlock builds (airlock/modeldir.py) - checked before anything in it is read.
        odd = modeldir.unexpected_in_object(obj)
        if odd:
            shown = ", ".join(odd[:5]) + (f" (+{len(odd) - 5} more)" if len(odd) > 5 else "")
            raise RegistryError(
                f"registry object {obj} holds unexpected entries: {shown}",
                "the registry was altered: do not use this model",
            )
        # Swapped or altered model files: model_signing checks every file against the signed manifest. The signer
        # must be one the policy allows in the stage the object is in (a promotion verifies it as production's).
        stage = obj.parent.name if obj.parent.name in verification.STAGES else None
        modelsign.verify(model_dir, sig, self.public_key, stage)
        # Files model_signing does not cover (ignored git paths, links) are caught by our own digest over everything.
        tree = hash_tree(model_dir)
        if tree.symlinks or tree.special:
            raise RegistryError(
                f"model in {obj} holds links or special files: {', '.join(tree.symlinks + tree.special)}",
                "the registry was altered: do not use this model",
            )
        actual = tree.root_digest
        expected = digest or f"sha256:{obj.name}"
        if actual != expected:
            raise RegistryError(
                f"model in {obj} has digest {actual[:23]}…, expected {expected[:23]}…",
                "the model changed after it was registered: do not use it",
            )
        provenance = _read(model_dir / "provenance.json", f"provenance.json of the model in {obj}")
        if not isinstance(provenance, dict):
            raise RegistryError(f"provenance.json of the model in {obj} is not a JSON object", "re-run the pipeline")
        # An expired certificate that still signed (model_signing checks its chain as of the certificate's start).
        try:
            verification.check_certificate_window(sig, provenance.get("created_at"))
        except verification.Mismatch as e:
            raise RegistryError(f"model in {obj}: {e}", "sign with a valid certificate: re-run the pipeline") from None
        # Signed evidence: every statement about this digest, by an allowed signer, agreeing with the provenance.
        attest.verify(obj / attest.DIR, obj / attest.SIG, self.public_key, actual, provenance, stage)
        return StagedModel(actual, obj, provenance, self)

    def check_signer_for(self, model: StagedModel, stage: str) -> None:
        """RegistryError unless the model's signer is one the signer policy allows in ``stage`` (a model may be
        staged by a signer that production refuses: airlock/verification.py, stage tables)."""
        try:
            modelsign.verify(model.path / "model", model.path / "model.sig", self.public_key, stage)
        except RegistryError as e:
            raise RegistryError(
                f"the model {model.digest[:23]}… is staged, but its signer may not sign {stage} models ({e.what})",
                f"sign with a signer the signer policy's [{stage}] table names",
            ) from None

    def approval_context(
        self, model: StagedModel, policy: _approvals.Policy | None = None, at: _dt.datetime | None = None
    ) -> _approvals.Context:
        # Bindings come from the signed provenance, judged against the trusted approvers file.
        commit = model.provenance.get("commit") or {}
        identities = commit.get("identities") or {}
        if not identities and commit.get("signer"):
            identities = {"signers": [commit["signer"]]}  # recorded before the range's identities were
        return (policy or self.approval_policy).context(
            run_id=model.provenance.get("run_id", ""),
            model_digest=model.digest,
            approvers_file=self.approvers_file,
            revoked_keys=self.revoked_keys,
            range_identities=identities if isinstance(identities, dict) else {},
            initiator=model.provenance.get("initiator") or {},
            at=at,
        )

    # -- staging -----------------------------------------------------------------------------------------------

    def stage(self, model_dir: Path, signature: Path, run_id: str, attestations: Path | None = None) -> StagedModel:
        """Stage a signed model with its signed attestations (default: ``attestations/`` and ``attestations.sig``
        beside the signature, where the flow writes them)."""
        with self._exclusive(), self._logged("stage", run_id=run_id) as log, self._no_space("staged"):
            staged = self._stage(model_dir, signature, run_id, attestations)
            log["digest"] = staged.digest
            return staged

    @contextlib.contextmanager
    def _no_space(self, what: str):
        """A write that fails (a full disk, a quota) is a one-line refusal; its partial copy is removed, and the
        pointers, which move only after a complete, verified copy, are as they were."""
        try:
            yield
        except OSError as e:
            with contextlib.suppress(OSError, AirlockError):
                self._sweep()
            raise RegistryError(
                f"cannot write to the registry {self.where}: {e.strerror or e}",
                f"free space there and run again: nothing was {what}",
            ) from None

    def _stage(self, model_dir: Path, signature: Path, run_id: str, attestations: Path | None) -> StagedModel:
        att = attestations or signature.parent / attest.DIR
        digest = hash_tree(model_dir).root_digest
        tmp = self.root / "staging" / f".{_hex(digest)}.{uuid.uuid4().hex}.tmp"
        tmp.mkdir(parents=True)
        shutil.copytree(model_dir, tmp / "model", symlinks=True)
        shutil.copy2(signature, tmp / "model.sig")
        if att.is_dir() and not att.is_symlink():
            shutil.copytree(att, tmp / attest.DIR, symlinks=True)
        if att.with_name(attest.SIG).is_file():
            shutil.copy2(att.with_name(attest.SIG), tmp / attest.SIG)
        _fsync_tree(tmp)
        staged = self.verify_object(tmp, digest)  # verify what was written, not what was handed in
        dest = self._commit_staged(tmp, digest)
        self._record_write("runs", _safe_run(run_id), {"run_id": run_id, "digest": digest})
        self._pointer_write("staging", {"run_id": run_id, "digest": digest})
        self.ledger.append(
            "registry.stage", {"digest": digest, "path": self._where_object("staging", digest)}, run_id=run_id
        )
        return StagedModel(digest, dest, staged.provenance, self)

    def staged_for_run(self, run_id: str) -> StagedModel:
        with self._logged("read", stage="staging", run_id=run_id) as log:
            model = self._staged_for_run(run_id)
            log["digest"] = model.digest
            return model

    def _staged_for_run(self, run_id: str) -> StagedModel:
        record = self._record_read("runs", _safe_run(run_id))
        if record is None:
            raise RegistryError(
                f"no model staged for run {run_id} in {self.where}", "check the run id and --config (registry.path)"
            )
        digest = record.get("digest") if isinstance(record, dict) else None
        if not isinstance(digest, str):
            raise RegistryError(
                f"the staging record of run {run_id} names no model digest",
                "the registry was altered: re-run the pipeline",
            )
        model = self.verify_object(self._obj("staging", digest), digest)
        # A staging record pointed at another run's model: the signed provenance names the run that built it.
        if model.provenance.get("run_id") != run_id:
            raise RegistryError(
                f"the model staged for run {run_id} was built by run {model.provenance.get('run_id')!r}",
                "the registry was altered: re-run the pipeline",
            )
        return model

    def has_staged(self, run_id: str) -> bool:
        """Whether a staging record exists for the run (not whether it verifies: staged_for_run says that)."""
        return self._record_read("runs", _safe_run(run_id), exists_only=True) is not None

    # -- production --------------------------------------------------------------------------------------------

    def check_approvals(self, digest: str, approvals: list[_approvals.Approval]) -> _approvals.Decision:
        """The staged model verifies and the approvals meet this registry's approval policy."""
        staged = self.verify_object(self._obj("staging", digest), digest)
        return _approvals.decide(approvals, self.approval_context(staged), self.approval_policy)

    # -- rejection ---------------------------------------------------------------------------------------------

    def reject(self, digest: str, rejection: _approvals.Approval) -> None:
        """Mark a staged model rejected, keeping the signed rejection; it can never be promoted afterwards."""
        with self._exclusive(), self._logged("reject", digest=digest):
            self._reject(digest, rejection)

    def _reject(self, digest: str, rejection: _approvals.Approval) -> None:
        staged = self.verify_object(self._obj("staging", digest), digest)
        v = _approvals.verify(rejection, self.approval_context(staged))  # a forged rejection marks nothing
        if v.decision != "reject":
            raise RegistryError("that statement approves the model; it does not reject it", "sign a rejection")
        record = {"digest": digest, "by": v.approver, "reason": v.reason, "rejection": rejection.to_dict()}
        self._record_write("rejected", _hex(digest), record)
        self.ledger.append(
            "registry.reject",
            {"digest": digest, "by": v.approver, "reason": v.reason},
            run_id=staged.provenance.get("run_id"),
        )

    def rejection(self, digest: str) -> dict | None:
        record = self._record_read("rejected", _hex(digest))
        if record is None:
            return None
        return record if isinstance(record, dict) else {"reason": "unreadable rejection record"}

    # -- production --------------------------------------------------------------------------------------------

    def promote(self, digest: str, approvals: list[_approvals.Approval]) -> dict:
        """Verify, then switch production to ``digest``; serialized with every other registry write."""
        with self._exclusive(), self._logged("promote", digest=digest, stage="production"), self._no_space("promoted"):
            interrupted = self.interrupted_promotion()
            if interrupted is not None:  # a crash after the previous switch: record it before going on
                self.ledger.append(
                    "registry.promote.recovered",
                    {
                        "digest": interrupted["digest"],
                        "approvers": interrupted.get("approvers"),
                        "reason": "production was switched and the promotion not recorded (a crash in between)",
                    },
                    run_id=interrupted.get("run_id"),
                )
            return self._promote(digest, approvals)

    def _promote(self, digest: str, approvals: list[_approvals.Approval]) -> dict:
        staged = self.verify_object(self._obj("staging", digest), digest)
        # A rejected model stays rejected: whatever approvals arrive later, it never reaches production.
        rejected = self.rejection(digest)
        if rejected is not None:
            raise RegistryError(
                f"promotion refused: {digest[:23]}… was rejected by {rejected.get('by', '?')}: "
                f"{rejected.get('reason') or 'no reason given'}",
                "train and approve a new model",
            )
        # Forged or insufficient approvals: the registry re-verifies them itself; it does not trust its caller.
        verdict = _approvals.decide(approvals, self.approval_context(staged), self.approval_policy)
        if not verdict.ok:
            self.ledger.append(
                "registry.promote.refused",
                {"digest": digest, "reason": verdict.reason, "code": verdict.code},
                run_id=staged.provenance.get("run_id"),
            )
            raise RegistryError(f"promotion refused: {verdict.reason}", "collect valid approvals and promote again")
        record = (
            json.dumps(
                {"approvals": [a.to_dict() for a in approvals], "policy": self.approval_policy.to_dict()}, indent=2
            )
            + "\n"
        )

        run_id = staged.provenance.get("run_id")
        begin = self.ledger.append(
            "registry.promote.begin", {"digest": digest, "approvers": verdict.approvers}, run_id=run_id
        )
        self._commit_promoted(digest, record.encode())
        pointer = {
            "digest": digest,
            "run_id": run_id,
            "promoted_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "approvers": verdict.approvers,
            "ledger_anchor": {"seq": begin["seq"], "hash": begin["hash"]},
        }
        previous = self.current_pointer("production")
        self._pointer_write("production", pointer)  # the one atomic switch
        self.ledger.append(
            "registry.promote",
            {
                "digest": digest,
                "previous": previous and previous.get("digest"),
                "approvers": verdict.approvers,
            },
            run_id=run_id,
        )
        return pointer

    def current(self, stage: str) -> StagedModel | None:
        """The model a stage's pointer names, verified as an object (signature, digest, attestations); None if the
        stage is empty. Production's approvals are judged by :meth:`verify_stage`."""
        ptr = self.current_pointer(stage)
        if ptr is None:
            return None
        with self._logged("read", stage=stage, digest=ptr["digest"]):
            return self.verify_object(self._obj(stage, ptr["digest"]), ptr["digest"])

    def find(self, digest: str) -> StagedModel:
        """The object ``digest`` from production if it was ever promoted, else from staging; verified."""
        for stage in ("production", "staging"):
            if self.holds(stage, digest):
                with self._logged("read", stage=stage, digest=digest):
                    return self.verify_object(self._obj(stage, digest), digest)
        raise RegistryError(f"no model {digest[:19]}… in {self.where}", "check the digest (airlock pending, verify)")

    def objects(self) -> list[tuple[str, str, Path]]:
        """(stage, digest, object directory) of every object the registry holds, unverified: the caller verifies."""
        out = []
        for stage in STAGES:
            base = self.root / stage
            if base.is_dir():
                out += [
                    (stage, f"sha256:{p.name}", self._obj(stage, f"sha256:{p.name}"))
                    for p in sorted(base.iterdir())
                    if p.is_dir() and re.fullmatch(r"[0-9a-f]{64}", p.name)
                ]
        return out

    def holds(self, stage: str, digest: str) -> bool:
        return (self.root / stage / _hex(digest)).is_dir()

    def current_pointer(self, stage: str) -> dict | None:
        ptr = self._pointer_read(stage)
        if ptr is None:
            return None
        if not isinstance(ptr, dict) or not isinstance(ptr.get("digest"), str):
            raise RegistryError(
                f"the {stage} pointer is unreadable", "the registry was altered: restore it from a backup"
            )
        _hex(ptr["digest"])
        return ptr

    # -- storage: where objects, pointers and records live (a directory here; registry/oci_registry.py: an OCI
    #    registry). Storage decides nothing: every object it hands back is verified by the methods above.

    @property
    def where(self) -> str:
        return str(self.root)

    def _where_object(self, stage: str, digest: str) -> str:
        return str(self.root / stage / _hex(digest))

    def _obj(self, stage: str, digest: str) -> Path:
        """The object's directory, for verification: in place, or decrypted into a new directory."""
        return self._readable(self.root / stage / _hex(digest), stage, digest)

    def _pull_dir(self) -> Path:
        """A directory of this process's for decrypted or fetched objects, removed when the registry is."""
        if self._pulls is None:
            import tempfile
            import weakref

            self._pulls = Path(tempfile.mkdtemp(prefix="airlock-registry-"))
            weakref.finalize(self, shutil.rmtree, str(self._pulls), True)
        return self._pulls

    def _readable(self, stored: Path, stage: str, digest: str) -> Path:
        """A stored object as verification reads it. Sealed model files are opened into a new directory
        (…/<stage>/<hex>, so that verification knows the stage); everything else is copied as it is, so that
        anything smuggled in is still seen by verify_object."""
        weights = stored / "model" / "training.json"
        if self.sealer is None:
            if weights.is_file() and not weights.is_symlink() and atrest.is_sealed(weights):
                raise RegistryError(
                    f"the models in {self.where} are encrypted and no registry key is configured",
                    "set registry.encryption_key to the key they were stored with",
                )
            return stored
        if not (stored / "model").is_dir() or (stored / "model").is_symlink():
            return stored  # verify_object refuses it, saying why
        out = self._pull_dir() / uuid.uuid4().hex / stage / _hex(digest)
        out.mkdir(parents=True)
        for entry in sorted(stored.iterdir()):
            if entry.name == "model":
                self.sealer.open_tree(entry, out / "model", digest)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, out / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, out / entry.name, follow_symlinks=False)
        return out

    def _commit_staged(self, tmp: Path, digest: str) -> Path:
        """Store a verified object written under ``tmp`` as staging's (sealing its model files first, with
        encryption at rest); returns the directory it can be read from."""
        dest = self.root / "staging" / _hex(digest)
        if dest.exists():
            shutil.rmtree(tmp)
            return self.verify_object(self._obj("staging", digest), digest).path
        if self.sealer is not None:
            self.sealer.seal_tree(tmp / "model", digest)
            _fsync_tree(tmp)
        os.rename(tmp, dest)
        return self._obj("staging", digest)

    def _commit_promoted(self, digest: str, approvals: bytes) -> None:
        """Store the staged object, with its approvals, as production's; verified before it is in place. The
        production pointer has not moved yet: the caller switches it."""
        prod = self.root / "production"
        prod.mkdir(parents=True, exist_ok=True)
        dest = prod / _hex(digest)
        if dest.exists():
            _write_atomic(dest / "approvals.json", approvals)
            return
        tmp = prod / f".{_hex(digest)}.{uuid.uuid4().hex}.tmp"
        shutil.copytree(self.root / "staging" / _hex(digest), tmp, symlinks=True)  # as stored: sealed stays sealed
        (tmp / "approvals.json").write_bytes(approvals)
        _fsync_tree(tmp)
        self.verify_object(self._readable(tmp, "production", digest), digest)
        os.rename(tmp, dest)  # the object appears whole or not at all
        _fsync_dir(prod)

    def _pointer_read(self, stage: str):
        p = self.root / stage / ("CURRENT" if stage == "production" else "LATEST")
        return _read(p, f"the {stage} pointer {p}") if p.exists() else None

    def _pointer_write(self, stage: str, record: dict) -> None:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        name = "CURRENT" if stage == "production" else "LATEST"
        _write_atomic(self.root / stage / name, json.dumps(record, indent=2).encode())

    def _record_read(self, kind: str, key: str, exists_only: bool = False):
        p = self.root / "staging" / kind / f"{key}.json"
        if not p.exists():
            return None
        return True if exists_only else _read(p, f"the {kind} record {p}")

    def _record_write(self, kind: str, key: str, record: dict) -> None:
        d = self.root / "staging" / kind
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic(d / f"{key}.json", json.dumps(record, indent=2).encode())

    def verify_stage(self, stage: str) -> tuple[StagedModel, _approvals.Decision | None]:
        """Everything `airlock verify` checks: signature, digest, and (production) the approvals and ledger anchor."""
        with self._logged("read", stage=stage) as log:
            model, verdict = self._verify_stage(stage)
            log["digest"] = model.digest
            return model, verdict

    def _verify_stage(self, stage: str) -> tuple[StagedModel, _approvals.Decision | None]:
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}", f"use one of {', '.join(STAGES)}")
        ptr = self.current_pointer(stage)
        if ptr is None:
            raise RegistryError(
                f"no {stage} model in {self.where}", "run the pipeline (airlock run / airlock demo) first"
            )
        model = self.verify_object(self._obj(stage, ptr["digest"]), ptr["digest"])
        if stage == "staging":
            return model, None
        approvals, recorded = self._approvals_of(model, ptr["digest"])
        try:
            at = _dt.datetime.fromisoformat(str(ptr.get("promoted_at")))
        except ValueError:
            raise RegistryError("the production pointer has no promotion time", "the registry was altered") from None
        # Judged by the policy and trust roots in force now (a key revoked, an approver removed, a role required
        # since the promotion) AND by the policy recorded with the model; expiry as at the promotion.
        verdict = _approvals.decide(approvals, self.approval_context(model, at=at), self.approval_policy)
        if not verdict.ok:
            raise RegistryError(
                f"production approvals do not meet the policy in force: {verdict.reason}",
                "do not use this model; promote one approved under the current policy",
            )
        if recorded is not None:
            again = _approvals.decide(approvals, self.approval_context(model, recorded, at), recorded)
            if not again.ok:
                raise RegistryError(
                    f"production approvals do not meet the policy recorded with the model: {again.reason}",
                    "the registry was altered: do not use this model",
                )
        anchor = ptr.get("ledger_anchor") or {}
        try:
            self.ledger.verify([Anchor(int(anchor["seq"]), str(anchor["hash"]))])
        except (KeyError, ValueError, TypeError):
            raise RegistryError("production pointer has no ledger anchor", "the registry was altered") from None
        return model, verdict

    def _approvals_of(
        self, model: StagedModel, digest: str
    ) -> tuple[list[_approvals.Approval], _approvals.Policy | None]:
        raw = _read(model.path / "approvals.json", f"approvals.json of production model {digest[:23]}…")
        policy = None
        if isinstance(raw, dict):  # {"approvals": [...], "policy": {...}}; a bare list before policies were recorded
            try:
                policy = _approvals.Policy.from_dict(raw.get("policy"))
            except ValueError:
                raise RegistryError(
                    f"production model {digest[:23]}… records an unreadable approval policy",
                    "the registry was altered: do not use this model",
                ) from None
            raw = raw.get("approvals")
        if not (
            isinstance(raw, list)
            and all(
                isinstance(a, dict) and isinstance(a.get("statement"), str) and isinstance(a.get("signature"), str)
                for a in raw
            )
        ):
            raise RegistryError(
                f"production model {digest[:23]}… has no readable approvals.json",
                "the registry was altered: do not use this model",
            )
        return [_approvals.Approval(a["statement"], a["signature"]) for a in raw], policy


def _read(path: Path, what: str):
    """A registry record, as untrusted JSON: whatever is wrong with it is a RegistryError (exit 1: refused)."""
    from airlock import untrusted

    try:
        data = path.read_bytes()
    except OSError as e:
        raise RegistryError(
            f"cannot read {what}: {e.strerror}", "the registry was altered: restore it from a backup"
        ) from None
    try:
        return untrusted.loads(data, what)
    except AirlockError as e:
        raise RegistryError(e.what, "the registry was altered: restore it from a backup") from None


def _safe_run(run_id: str) -> str:
    if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
        raise RegistryError(f"malformed run id {run_id!r}", "run ids are UUIDs as printed by 'airlock run'")
    return run_id
