"""Which models did this data touch? ``airlock models --affected-by X``.

X is a file's sha256, a dataset's or a batch's root digest, or a batch id (``b0007``, or ``train/b0007``). The answer
comes from the signed provenance of every model the registry holds - each staged model, and each model production
ever held (a promoted object stays in ``production/`` after it is replaced) - read only after the object verifies.

Security rules:
* Nothing is taken from an object that does not verify: such an object is listed as unverifiable with its reason,
  and the command exits 1, because a model we cannot read might be one that was affected.
* A model production held according to the ledger whose object is gone is listed too (``missing``): "nothing was
  affected" is never said about a model nobody can check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from airlock.errors import RegistryError, UsageError

_HEX = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_BATCH = re.compile(r"^(?:([A-Za-z0-9_.-]+)/)?(b[0-9]{4,})$")


@dataclass
class Hit:
    digest: str
    run_id: str | None = None
    stages: list[str] = field(default_factory=list)  # staging, production (held once), production (current)
    matched: list[str] = field(default_factory=list)  # what in the provenance matched, readable
    approvers: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)  # when production switched to it (from the ledger)
    problem: str | None = None  # unverifiable / missing: the reason

    def to_dict(self) -> dict:
        return {
            "digest": self.digest,
            "run_id": self.run_id,
            "stages": self.stages,
            "matched": self.matched,
            "approvers": self.approvers,
            "promoted_at": self.promoted,
            "problem": self.problem,
        }


def parse_needle(text: str) -> tuple[str, str, str | None]:
    """("digest", hex, None) or ("batch", id, dataset or None); UsageError for anything else."""
    t = text.strip()
    m = _HEX.match(t.lower())
    if m:
        return "digest", m.group(1), None
    b = _BATCH.match(t)
    if b:
        return "batch", b.group(2), b.group(1)
    raise UsageError(
        f"--affected-by {text!r} is not a sha256 (file, dataset or batch root digest) or a batch id",
        "give e.g. sha256:<64 hex>, b0007 or train/b0007",
    )


def matches(provenance: dict, needle: tuple[str, str, str | None]) -> list[str]:
    kind, value, only = needle
    found = []
    for name, ds in sorted((provenance.get("datasets") or {}).items()):
        if not isinstance(ds, dict) or (only and name != only):
            continue
        raw_files, raw_batches = ds.get("files"), ds.get("batches")
        files: dict = raw_files if isinstance(raw_files, dict) else {}
        batches: dict = raw_batches if isinstance(raw_batches, dict) else {}
        if kind == "digest":
            if str(ds.get("root_digest", "")).removeprefix("sha256:") == value:
                found.append(f"{name}: the dataset (version {ds.get('version')})")
            for bid, b in sorted(batches.items()):
                if isinstance(b, dict) and str(b.get("root_digest", "")).removeprefix("sha256:") == value:
                    found.append(f"{name}: batch {bid} ({b.get('source')})")
            for path, e in sorted(files.items()):
                if isinstance(e, dict) and e.get("sha256") == value:
                    found.append(f"{name}: file {path} (batch {e.get('batch')})")
        else:
            used = sorted(p for p, e in files.items() if isinstance(e, dict) and e.get("batch") == value)
            if value in batches or used:
                src = (batches.get(value) or {}).get("source") if isinstance(batches.get(value), dict) else None
                found.append(f"{name}: batch {value} ({src}), {len(used)} file(s)")
    return found


def affected_by(reg, text: str) -> list[Hit]:
    """Every model in the registry (any stage, any production it ever held) whose signed provenance names X."""
    needle = parse_needle(text)
    current = reg.current_pointer("production")
    promoted: dict[str, list[str]] = {}
    approved: dict[str, set[str]] = {}
    for e in reg.ledger.entries():  # the whole chain is verified on the way
        if e["kind"] in ("registry.promote", "registry.promote.recovered"):
            data = e.get("data") or {}
            d = data.get("digest")
            if isinstance(d, str):
                promoted.setdefault(d, []).append(str(e.get("time")))
                approved.setdefault(d, set()).update(str(a) for a in data.get("approvers") or [])
    hits: dict[str, Hit] = {}
    for stage, digest, obj in reg.objects():
        label = stage
        if stage == "production":
            label = "production (current)" if current and current.get("digest") == digest else "production (held)"
        try:
            model = reg.verify_object(obj, digest)
        except RegistryError as e:
            hit = hits.setdefault(digest, Hit(digest))
            hit.stages.append(label)
            hit.problem = f"unverifiable in {stage}: {e.what}"
            continue
        found = matches(model.provenance, needle)
        if not found:
            continue
        hit = hits.setdefault(digest, Hit(digest, model.provenance.get("run_id")))
        hit.stages.append(label)
        hit.matched = found
        hit.promoted = promoted.get(digest, [])
        hit.approvers = sorted(approved.get(digest, set()))
    for digest, times in promoted.items():
        if digest not in hits and not reg.holds("production", digest):
            hits[digest] = Hit(
                digest,
                stages=["production (held)"],
                promoted=times,
                problem="production held it (ledger) and its object is gone: it cannot be checked",
            )
    return sorted(hits.values(), key=lambda h: (h.problem is None, h.promoted[-1:] or [""], h.digest), reverse=True)
