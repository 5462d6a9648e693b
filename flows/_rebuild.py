"""``airlock bom`` and ``airlock rebuild``: what a verified model is made of, and whether it can be made again.

``bom STAGE|DIGEST`` prints the AIBOM of a model only after it verifies (airlock.load's checks for a stage; the
registry's object checks for a digest): weights, hyperparameters, preprocessing, datasets, commit, packages.

``rebuild RUN_ID`` re-runs training for a model the registry holds: the commit recorded in its signed provenance,
exported blob by blob; the training data checked against the manifest *of that commit* before the trainer sees it;
the trainer in the sandbox, exactly as the flow runs it. It reports whether the new weights' sha256 is the signed
one. A team whose trainer is not deterministic learns it here, not during an incident.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from airlock.errors import GateFailed, RegistryError


def _model(pol, ref: str):
    """(files, provenance, digest) of a verified model: a stage through verified loading, a digest from the
    registry's object checks, a run id through its staging record."""
    from registry import Registry
    from registry.loading import load, read_verified

    if ref in ("production", "staging"):
        m = load(ref, config=pol.source)
        return m.files, m.provenance, m.digest
    reg = Registry.from_policy(pol)
    if ref.startswith("sha256:"):
        model = reg.find(ref)
    else:
        model = reg.staged_for_run(ref)
    return read_verified(model.model_dir, model.digest), model.provenance, model.digest


def bom(pol, ref: str) -> str:
    files, provenance, digest = _model(pol, ref)
    doc = json.loads(files["aibom.cdx.json"])
    by_ref = {c.get("bom-ref"): c for c in doc.get("components", [])}
    model = by_ref.get("model", {})
    props = {p["name"]: p["value"] for p in model.get("properties", [])}
    lines = [f"model {digest}  (run {provenance.get('run_id')})"]
    lines.append(f"  weights   sha256:{model.get('hashes', [{}])[0].get('content')}")
    hp = {k.split(":", 2)[2]: v for k, v in props.items() if k.startswith("airlock:hyperparameter:")}
    lines.append("  hyperparameters  " + (", ".join(f"{k}={v}" for k, v in sorted(hp.items())) or "-"))
    pre = [v for k, v in sorted(props.items()) if k.startswith("airlock:preprocessing:")]
    lines.append("  preprocessing    " + ("; ".join(pre) or "-"))
    commit = provenance.get("commit") or {}
    lines.append(f"  code      {commit.get('commit')} signed by {commit.get('signer')}")
    for name, ds in sorted((provenance.get("datasets") or {}).items()):
        batches = ", ".join(f"{b} ({(v or {}).get('source')})" for b, v in sorted((ds.get("batches") or {}).items()))
        lines.append(
            f"  dataset   {name}: {ds.get('root_digest')}, {len(ds.get('files') or {})} files"
            + (f"; batches {batches}" if batches else "")
        )
    env = (provenance.get("trainer") or {}).get("environment") or {}
    if env.get("lock"):
        lines.append(f"  environment  {env.get('lock')} {env.get('lock_digest')}, tree {env.get('tree_digest')}")
    else:
        lines.append("  environment  unpinned (no training.lock: Airlock's own packages)")
    packages = [c for c in doc.get("components", []) if c.get("type") == "library"]
    lines.append("  packages  " + ", ".join(f"{c.get('name')}=={c.get('version')}" for c in packages))
    card = model.get("modelCard", {}).get("quantitativeAnalysis", {}).get("performanceMetrics", [])
    for m in card:
        lines.append(f"  metric    {m.get('type')} = {m.get('value')}")
    return "\n".join(lines)


def rebuild(pol, run_id: str) -> tuple[bool, str, str]:
    """(identical, signed weights sha256, rebuilt weights sha256)."""
    import hashlib

    from airlock import gitutil, sandbox, trust
    from airlock.hashing import sha256_file
    from flows.retrain import train
    from gates import data

    files, provenance, _ = _model(pol, run_id)
    signed = hashlib.sha256(files["model.safetensors"]).hexdigest()
    commit = (provenance.get("commit") or {}).get("commit")
    manifest_rel = ((provenance.get("datasets") or {}).get("train") or {}).get("manifest")
    if not commit or not manifest_rel:
        raise RegistryError("the model's provenance names no commit or training manifest", "it cannot be rebuilt")
    with tempfile.TemporaryDirectory(prefix="airlock-rebuild-") as d:
        work = Path(d)
        pinned = trust.pin(pol, trust.resolve(pol, work / "trust"))
        src = work / "src"
        gitutil.export_commit(pol.repo.path, commit, src)
        # The data as that commit's manifest says it was: anything else and the rebuild proves nothing.
        snap = work / "data" / "train"
        shutil.copytree(pol.data.train.dir, snap)
        checked = data.check("train", snap, src / manifest_rel)
        if not checked.passed:
            # A refusal (exit 1), like the data gate's own: the rebuild would prove nothing.
            raise GateFailed(
                f"the training data is not what run {run_id} trained on: {checked.reason.split(' — ')[0]}",
                "restore the dataset version that commit's manifest names, then rebuild",
            )
        box = sandbox.Sandbox.from_policy(pinned)
        box.check()
        # The trainer's environment as recorded: the same lock (by digest), installed again with every hash checked.
        recorded = ((provenance.get("trainer") or {}).get("environment")) or {}
        if recorded.get("lock"):
            from dataclasses import replace

            from gates import environment

            env = environment.check(str(recorded["lock"]), src, pinned.training.environment_cache())
            if not env.passed:
                raise GateFailed(f"the trainer environment of run {run_id} cannot be rebuilt: {env.reason}")
            if env.evidence.get("lock_digest") != recorded.get("lock_digest"):
                raise GateFailed(
                    f"the lock {recorded['lock']} in commit {commit[:12]} is not the one run {run_id} recorded",
                    "the registry or the repository was altered",
                )
            box = replace(box, env=env.evidence["root"])
        out = train.fn(pinned, box, src, work)
        rebuilt = sha256_file(out / "model.safetensors")[0]
    return rebuilt == signed, signed, rebuilt
