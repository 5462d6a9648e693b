"""Data-validation gate: the dataset's *content* is what the policy declares, and did not shift suspiciously.

Runs after the checksum gate (gates/data.py), on the verified snapshot the trainer will read. Rules come from the
policy (``[data.<name>.validate]``, docs/policy.md); each is off unless declared. Every refusal gives the numbers and
names the file.

Attacks it blocks:
* a signed commit that ingests malformed or out-of-range samples (x shape, dtype, values outside [x_min, x_max],
  NaN/inf) - e.g. adversarially scaled inputs or a batch from another pipeline;
* label poisoning by injecting labels outside the task's label set;
* label-distribution poisoning: a new version whose label distribution moved further from the previous version's
  than ``max_label_shift`` (total-variation distance) - e.g. one class flooded or starved;
* the golden set swapped together with its manifest in a signed commit: the manifest's root digest must equal the
  digest pinned in the policy (a trust root outside the repository), ``data.<name>.pinned_root_digest``;
* a manifest whose recorded stats were edited (they would become the next version's baseline): the stats are
  recomputed from the data and must match.
"""

from __future__ import annotations

import json
from pathlib import Path

from airlock import datastats
from airlock import ingest as _ingest
from airlock import manifest as _manifest
from airlock.errors import AirlockError, DataError
from gates._result import GateResult

GATE = "data"


def _declared(rules) -> bool:
    return rules is not None and any(v is not None for v in rules.model_dump().values())


def check_manifest(
    dataset: str, directory: str | Path, manifest_path: str | Path, rules, pinned_root_digest: str | None = None
) -> GateResult:
    """:func:`check` for a manifest file; its parent version is read from the history beside it."""
    try:
        m = _manifest.load(manifest_path)
        wants_parent = _declared(rules) and rules.max_label_shift is not None
        parent = _ingest.load_parent(Path(manifest_path), m) if wants_parent else None
    except AirlockError as e:
        return GateResult.fail(
            f"{GATE}:{dataset}", e.one_line(), evidence={"manifest": str(manifest_path)}, code="data.lineage_broken"
        )
    return check(dataset, directory, m, parent, rules, pinned_root_digest)


def check(
    dataset: str,
    directory: str | Path,
    manifest: dict,
    parent_manifest: dict | None,
    rules,
    pinned_root_digest: str | None = None,
) -> GateResult:
    """``manifest``/``parent_manifest``: loaded with airlock.manifest.load; ``rules``: a ValidationPolicy (or None)."""
    gate = f"{GATE}:{dataset}"
    directory = Path(directory)
    evidence: dict = {
        "dataset": dataset,
        "root_digest": manifest["root_digest"],
        "version": manifest.get("version"),
        "parent": manifest.get("parent"),
    }
    metrics: dict[str, float] = {}

    # Golden set swapped together with its manifest: the signed commit vouches for both, the pin does not move.
    if pinned_root_digest is not None:
        evidence["pinned_root_digest"] = pinned_root_digest
        if manifest["root_digest"] != pinned_root_digest:
            where = f" ({Path(manifest['_path']).name})" if manifest.get("_path") else ""
            return GateResult.fail(
                gate,
                f"dataset '{dataset}'{where} has root digest {manifest['root_digest']}, not the "
                f"pinned {pinned_root_digest} (data.{dataset}.pinned_root_digest) — the "
                "dataset was replaced; if that was intended, the trust-root owners update "
                "the pin in the policy",
                evidence=evidence,
                code="data.pin_mismatch",
            )
    if not _declared(rules):
        what = "pinned root digest matches; " if pinned_root_digest else ""
        return GateResult.ok(gate, f"{what}no content rules declared", evidence=evidence)

    splits = list(rules.splits) if rules.splits else datastats.splits(directory)
    if not splits:
        return GateResult.fail(
            gate,
            f"dataset '{dataset}' has no <split>_x.npy/<split>_y.npy pair to validate",
            evidence=evidence,
            code="data.no_splits",
        )
    recorded = manifest.get("stats") or {}
    parent_stats = (parent_manifest or {}).get("stats") or {}
    problems: list[str] = []
    per_split: dict = {}
    for split in splits:
        try:
            st = datastats.split_stats(directory, split, bounds=(rules.x_min, rules.x_max))
        except DataError as e:
            problems.append(f"split {split}: {e.what}")
            continue
        per_split[split] = st
        problems += _sample_rules(split, st, rules)
        labels = st["y"].get("labels")
        if (rules.labels is not None or rules.max_label_shift is not None) and labels is None:
            problems.append(f"{split}_y.npy: dtype {st['y']['dtype']} holds no integer labels")
            continue
        problems += _label_set_rule(split, labels, rules)
        # Recorded stats that differ from the data would poison the next version's baseline.
        if split in recorded and _plain(recorded[split]) != _plain(_recordable(st)):
            problems.append(f"split {split}: the manifest's recorded stats do not match the data")
        if rules.max_label_shift is not None and parent_manifest is not None:
            problems += _label_shift_rule(split, labels, parent_manifest, parent_stats, rules, metrics)
    evidence["stats"] = {k: _recordable(v) for k, v in per_split.items()}
    evidence["parent_stats"] = {k: parent_stats.get(k) for k in per_split} if parent_manifest is not None else None
    if problems:
        return GateResult.fail(
            gate,
            f"dataset '{dataset}' content refused — {'; '.join(problems)} — fix or remove "
            "the offending batch and ingest again",
            metrics=metrics,
            evidence=evidence,
            code="data.content_refused",
        )
    shift = (
        ""
        if parent_manifest is None or rules.max_label_shift is None
        else " label shift "
        + ", ".join(f"{k.split(':', 1)[1]} {v:.3f}" for k, v in metrics.items())
        + f" ≤ {rules.max_label_shift:g} vs version {parent_manifest.get('version', 1)};"
    )
    return GateResult.ok(
        gate,
        f"content of {', '.join(splits)} matches the declared rules;{shift}".rstrip(";"),
        metrics=metrics,
        evidence=evidence,
    )


def _sample_rules(split: str, st: dict, rules) -> list[str]:
    """Shape, dtype and value range of the samples, and their alignment with the labels."""
    xn, yn = f"{split}_x.npy", f"{split}_y.npy"
    x, y = st["x"], st["y"]
    problems = []
    n = x["shape"][0] if x["shape"] else None
    # Misaligned samples and labels: some samples would be trained on the wrong label.
    if len(y["shape"]) != 1 or n != y["shape"][0]:
        problems.append(f"{xn} has shape {_shape(x['shape'])} but {yn} has {_shape(y['shape'])}")
    # Samples of another shape or dtype: a batch from another pipeline, or crafted to break the model code.
    if rules.x_shape is not None and x["shape"][1:] != list(rules.x_shape):
        problems.append(f"{xn}: one sample has shape {_shape(x['shape'][1:])}, the policy says {_shape(rules.x_shape)}")
    if rules.x_dtype is not None and x["dtype"] != rules.x_dtype:
        problems.append(f"{xn}: dtype {x['dtype']}, the policy says {rules.x_dtype}")
    # NaN/inf and out-of-range values: adversarially scaled inputs, or a broken preprocessing step.
    if (rules.x_min is not None or rules.x_max is not None) and x.get("nonfinite"):
        problems.append(f"{xn}: {x['nonfinite']} NaN/inf values")
    out = x.get("below_min", 0) + x.get("above_max", 0)
    if out:
        problems.append(
            f"{xn}: {out} values outside [{_g(rules.x_min, '-inf')}, {_g(rules.x_max, 'inf')}] "
            f"(min {_g(x['min'])}, max {_g(x['max'])}; {x.get('below_min', 0)} below, "
            f"{x.get('above_max', 0)} above)"
        )
    return problems


def _label_set_rule(split: str, labels: dict, rules) -> list[str]:
    """Label poisoning by injection: labels outside the task's label set."""
    if rules.labels is None:
        return []
    allowed = {str(v) for v in rules.labels}
    foreign = {k: v for k, v in labels.items() if k not in allowed}
    if not foreign:
        return []
    shown = ", ".join(f"{k} ({v} samples)" for k, v in sorted(foreign.items(), key=lambda kv: -kv[1])[:5])
    return [f"{split}_y.npy: labels outside the allowed set {_labelset(rules.labels)}: {shown}"]


def _label_shift_rule(
    split: str, labels: dict, parent_manifest: dict, parent_stats: dict, rules, metrics: dict[str, float]
) -> list[str]:
    """Label-distribution poisoning: one class flooded or starved since the previous version."""
    base = (parent_stats.get(split) or {}).get("y", {}).get("labels")
    pv = parent_manifest.get("version", 1)
    if base is None:
        return [f"split {split}: version {pv} (the parent) has no label counts to compare with"]
    tv, rows = datastats.label_shift(labels, base)
    metrics[f"label_shift:{split}"] = round(tv, 6)
    if tv <= rules.max_label_shift:
        return []
    moved = ", ".join(f"label {k} {q:.1%} → {p:.1%}" for k, q, p in rows[:3])
    return [
        f"split {split}: label distribution moved {tv:.3f} (total variation) from version {pv} "
        f"({parent_manifest['root_digest'][:19]}…), the policy allows {rules.max_label_shift:g}"
        f" — {moved} ({split}_y.npy)"
    ]


def _recordable(st: dict) -> dict:
    """The stats as recorded at ingest (without the policy-dependent out-of-range counts)."""
    return {"x": {k: v for k, v in st["x"].items() if k not in ("below_min", "above_max")}, "y": st["y"]}


def _plain(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def _shape(s) -> str:
    return "(" + ", ".join(str(v) for v in s) + ("," if len(s) == 1 else "") + ")"


def _g(v, none: str = "none") -> str:
    return none if v is None else f"{v:g}"


def _labelset(labels: list[int]) -> str:
    ls = sorted(set(labels))
    if len(ls) > 2 and ls == list(range(ls[0], ls[-1] + 1)):
        return f"{{{ls[0]}..{ls[-1]}}}"
    return "{" + ", ".join(str(v) for v in ls) + "}"
