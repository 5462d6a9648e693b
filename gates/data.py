"""Data-checksum gate: the dataset is exactly as ingested.

Compares a dataset directory with its manifest (committed in the training repository, so covered by the signed
commit). Every difference is reported by file name.

Attacks it blocks:
* poisoned or edited training samples after ingestion (changed file: sha256 or size differs);
* injected samples (extra file) and silently dropped samples (missing file);
* a symlink swapped in to point the trainer at attacker-controlled data outside the dataset, or a FIFO/device that
  yields different bytes to the hasher and to the trainer (links and special files are refused, never followed).
"""

from __future__ import annotations

from pathlib import Path

from airlock import manifest as _manifest
from airlock.errors import AirlockError
from airlock.hashing import hash_tree
from gates._result import GateResult

GATE = "data"


def check(dataset: str, directory: str | Path, manifest_path: str | Path) -> GateResult:
    gate = f"{GATE}:{dataset}"
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return GateResult.fail(
            gate,
            f"dataset directory {directory} is missing or is a link — restore the dataset as ingested",
            evidence={"manifest": str(manifest_path)},
            code="data.missing",
        )
    loaded: dict = {}

    def load_manifest() -> None:  # parsed while helper processes hash (many files)
        loaded["m"] = _manifest.load(manifest_path)

    try:
        tree = hash_tree(directory, meanwhile=load_manifest)
    except AirlockError as e:  # a malformed manifest or an unreadable file is a refusal, never a pass
        return GateResult.fail(gate, e.one_line(), evidence={"manifest": str(manifest_path)}, code="data.unreadable")
    m = loaded["m"]
    expected: dict[str, tuple[str, int]] = m["_files"]
    actual = tree.files
    if actual == expected:  # the usual case, compared in one pass
        missing, extra, changed = [], [], []
    else:
        missing = sorted(expected.keys() - actual.keys() - set(tree.symlinks))
        extra = sorted(actual.keys() - expected.keys())
        changed = sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p])
    links = tree.symlinks
    special = tree.special
    try:
        actual_digest = m["root_digest"] if actual == expected else tree.root_digest
    except AirlockError as e:  # a file whose name cannot be recorded (a line break in it): refused by name
        return GateResult.fail(gate, e.one_line(), evidence={"manifest": str(manifest_path)}, code="data.unsafe_name")
    evidence = {
        "dataset": dataset,
        "directory": str(directory),
        "manifest": str(manifest_path),
        "expected_root_digest": m["root_digest"],
        # Same (path, sha256, size) list, same root digest: computed again only when the lists differ.
        "actual_root_digest": actual_digest,
        "files": len(actual),
        "bytes": sum(s for _, s in actual.values()),
        "missing": missing,
        "extra": extra,
        "changed": changed,
        "symlinks": links,
        "special": special,
    }
    metrics = {"files": float(len(actual)), "bytes": float(evidence["bytes"])}
    problems = []
    if changed:
        problems.append(f"changed: {_names(changed)}")  # poisoned / edited samples
    if extra:
        problems.append(f"extra: {_names(extra)}")  # injected samples
    if missing:
        problems.append(f"missing: {_names(missing)}")  # dropped samples
    if links:
        problems.append(f"symlinked: {_names(links)}")  # redirected reads
    if special:
        problems.append(f"not regular files: {_names(special)}")
    if problems:
        return GateResult.fail(
            gate,
            f"dataset '{dataset}' differs from its manifest — {'; '.join(problems)} — "
            "restore the data as ingested or ingest and commit a new manifest",
            metrics=metrics,
            evidence=evidence,
            code="data.mismatch",
        )
    return GateResult.ok(
        gate,
        f"dataset '{dataset}': {len(actual)} files match {m['root_digest'][:19]}…",
        metrics=metrics,
        evidence=evidence,
    )


def _names(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")
