"""Verified loading: the one way serving code obtains a model (``airlock.load``, ``airlock verify --export``).

Security rules:
* Nothing is handed out before everything verifies (a swapped, unsigned, unapproved or altered model is refused
  with a one-line reason, :class:`~airlock.errors.RegistryError`):
  - the signature by the trusted model-signing key and Airlock's digest over every file (a swapped or altered file);
  - for production, the approvals against the approval policy in force and the one recorded at promotion, and the
    ledger anchor (:meth:`registry.Registry.verify_stage`: an unapproved model, a forged promotion);
  - the signed gate evidence: every gate the provenance records passed (or was advisory), and each evidence file
    says what the provenance says (a model staged around a failed gate; evidence swapped from another model);
  - the AIBOM: its weights digest is the weights' and its datasets are the provenance's (a bill of materials that
    describes another model).
* The weights are parsed from the bytes that were verified. Every file is read into memory once, without following
  links, and the digest over those bytes must be the verified digest: a file swapped after the check, or between the
  check and the read, changes it and is refused. No path is opened again after that (no check-then-reopen window).
* No pickle: the weights are safetensors, parsed from bytes by the safetensors library.

``VerifiedModel.export(dir)`` writes exactly those verified bytes for a serving container (the init-container path,
``templates/k8s/inference.yaml``): into a temporary directory first, read-only, then renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airlock import modeldir, untrusted
from airlock.errors import RegistryError
from airlock.hashing import root_digest

_PASSING = ("pass", "advisory")


@dataclass(frozen=True)
class VerifiedModel:
    """A model that verified, as bytes: what serving code may use, and nothing read from disk after the check."""

    stage: str
    digest: str
    files: Mapping[str, bytes]  # relative path -> content, exactly what verified
    metadata: dict[str, Any]  # training.json: input shape, classes, preprocessing
    provenance: dict[str, Any]
    approvers: tuple[str, ...]  # production: who approved, as the registry verified

    @property
    def weights(self) -> bytes:
        return self.files[modeldir.WEIGHTS]

    def tensors(self) -> dict[str, Any]:
        """The weights as torch tensors, parsed from the verified bytes."""
        from safetensors.torch import load

        return load(self.weights)

    def export(self, dest: str | Path) -> Path:
        """Write the verified files to ``dest`` (which must not exist yet): a temporary directory beside it, files
        read-only, then one rename. A reader never sees a half-written model."""
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise RegistryError(f"{dest} already exists", "export into a new directory (an emptyDir: /models/current)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        for rel, data in sorted(self.files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for d in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
            d.chmod(0o555)
        os.rename(tmp, dest)
        return dest


def load(stage: str = "production", *, config: str | Path = "airlock.toml", registry: str | Path | None = None):
    """Verify the ``stage`` model of the registry under the policy ``config`` (its trust roots and approval policy)
    and return it as a :class:`VerifiedModel`. Raises :class:`~airlock.errors.AirlockError` with a one-line reason."""
    from airlock import policy, trust
    from registry.store import Registry

    pol = policy.load(config)
    with tempfile.TemporaryDirectory(prefix="airlock-trust-") as d:
        pinned = trust.pin(pol, trust.resolve(pol, Path(d)))
        reg = Registry.from_policy(pinned, root=registry)
        model, verdict = reg.verify_stage(stage)
    files = read_verified(model.model_dir, model.digest)
    metadata = _json(files, modeldir.METADATA)
    provenance = _json(files, "provenance.json")
    _check_gate_evidence(files, provenance)
    _check_aibom(files, provenance)
    approvers = tuple(v.approver for v in verdict.accepted) if verdict is not None else ()
    return VerifiedModel(stage, model.digest, files, metadata, provenance, approvers)


def read_verified(model_dir: Path, digest: str) -> dict[str, bytes]:
    """Every file, once, without following links; the digest over these bytes must be the verified one."""
    files: dict[str, bytes] = {}
    stack = [("", model_dir)]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as entries:
            for e in entries:
                rel = prefix + e.name
                mode = os.lstat(e.path).st_mode
                if stat.S_ISDIR(mode):
                    stack.append((rel + "/", Path(e.path)))
                    continue
                if not stat.S_ISREG(mode):  # a link or a FIFO appeared after the check: never read through it
                    raise RegistryError(
                        f"{rel} in the {model_dir} model changed after it verified (not a regular file)",
                        "the registry is being altered: do not use this model",
                    )
                fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as f:
                    files[rel] = f.read()
    actual = root_digest({rel: (hashlib.sha256(b).hexdigest(), len(b)) for rel, b in files.items()})
    if actual != digest:
        raise RegistryError(
            f"the model in {model_dir} changed between its verification and its read ({actual[:19]}… ≠ {digest[:19]}…)",
            "the registry is being altered: do not use this model",
        )
    return files


def _json(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    if name not in files:
        raise RegistryError(f"the verified model holds no {name}", "re-run the pipeline: the model is incomplete")
    doc = untrusted.loads(files[name], f"{name} of the verified model", "re-run the pipeline")
    if not isinstance(doc, dict):
        raise RegistryError(f"{name} of the verified model is not a JSON object", "re-run the pipeline")
    return doc


def _check_gate_evidence(files: Mapping[str, bytes], provenance: dict[str, Any]) -> None:
    """Every gate the signed provenance records passed, and its evidence file (signed too) agrees with it."""
    gates = provenance.get("gates")
    if not isinstance(gates, list) or not gates:
        raise RegistryError("the model's provenance records no gate verdicts", "re-run the pipeline")
    for g in gates:
        if not isinstance(g, dict) or not isinstance(g.get("gate"), str):
            raise RegistryError("the model's provenance holds a malformed gate verdict", "re-run the pipeline")
        if g.get("verdict") not in _PASSING:
            raise RegistryError(
                f"gate {g['gate']} did not pass for this model ({g.get('verdict')}, {g.get('code')})",
                "do not serve it: a model that failed a gate is never promoted by Airlock",
            )
        name = f"{modeldir.EVIDENCE}/{modeldir.evidence_name(g['gate'])}.json"
        if name not in files:
            continue  # gates judged after signing (none today) have no evidence inside the signed directory
        ev = _json(files, name)
        if (ev.get("verdict"), ev.get("code")) != (g.get("verdict"), g.get("code")):
            raise RegistryError(
                f"the evidence of gate {g['gate']} says {ev.get('verdict')} ({ev.get('code')}), the provenance "
                f"{g.get('verdict')} ({g.get('code')})",
                "the model's evidence is not its own: do not use it",
            )


def _check_aibom(files: Mapping[str, bytes], provenance: dict[str, Any]) -> None:
    """The bill of materials describes these weights and these datasets."""
    bom = _json(files, "aibom.cdx.json")
    raw = bom.get("components")
    components: list = raw if isinstance(raw, list) else []
    by_ref = {c.get("bom-ref"): c for c in components if isinstance(c, dict)}
    weights = hashlib.sha256(files[modeldir.WEIGHTS]).hexdigest() if modeldir.WEIGHTS in files else None
    if weights is None or _sha256_of(by_ref.get("model")) != weights:
        raise RegistryError(
            "the AIBOM's weights digest is not the weights' digest", "the AIBOM describes another model: re-run"
        )
    raw_ds = provenance.get("datasets")
    datasets: dict = raw_ds if isinstance(raw_ds, dict) else {}
    for name, ds in datasets.items():
        want = str((ds or {}).get("root_digest", "")).removeprefix("sha256:")
        have = [_sha256_of(c) for c in components if isinstance(c, dict) and c.get("name") == f"dataset-{name}"]
        if want not in have:
            raise RegistryError(
                f"the AIBOM does not record dataset {name!r} as the provenance does (sha256:{want[:12]}…)",
                "the AIBOM describes another training run: re-run",
            )


def _sha256_of(component: Any) -> str | None:
    if not isinstance(component, dict) or not isinstance(component.get("hashes"), list):
        return None
    return next(
        (h.get("content") for h in component["hashes"] if isinstance(h, dict) and h.get("alg") == "SHA-256"), None
    )
