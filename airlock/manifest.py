"""Dataset manifests: the committed record of a dataset exactly as ingested.

Format (JSON, committed in the training repository next to the code, so the commit signature covers it)::

    {"format": "airlock-manifest/v1", "dataset": "train",
     "files": {"train_x.npy": {"sha256": "...", "size": 123}, ...},
     "root_digest": "sha256:..."}

Manifests written by ``airlock data ingest`` (:mod:`airlock.ingest`) add, backward-compatibly::

    "version": 2,                         # 1 for the first ingested batch
    "parent": "sha256:...",               # root digest of version 1 (null for version 1)
    "files": {"train_x.npy": {"sha256": "...", "size": 123, "batch": "b0002"}, ...},
    "batches": {"b0002": {"source": "s3://...", "note": "...", "who": "...", "time": "...", "files": [...],
                          "replaced": {...}, "root_digest": "sha256:...", "version": 2}, ...},
    "stats": {"train": {"x": {...}, "y": {...}}, ...}      # see airlock.datastats

The root digest covers the file list only (path, sha256, size); the rest is covered, like the file list, by the
signature of the commit that holds the manifest. Earlier versions live in ``history/<dataset>/v<N>.json`` beside
the manifest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from airlock import untrusted
from airlock.errors import DataError
from airlock.hashing import Tree, hash_tree, root_digest

FORMAT = "airlock-manifest/v1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def build(directory: str | Path, dataset: str) -> dict:
    tree = hash_tree(directory)
    if tree.symlinks or tree.special:
        raise DataError(
            f"{directory} holds links or special files: {', '.join(tree.symlinks + tree.special)}",
            "replace them with regular files before writing a manifest",
        )
    return to_manifest(tree, dataset)


def to_manifest(tree: Tree, dataset: str) -> dict:
    return {
        "format": FORMAT,
        "dataset": dataset,
        "files": {p: {"sha256": d, "size": s} for p, (d, s) in sorted(tree.files.items())},
        "root_digest": tree.root_digest,
    }


def versioned(
    dataset: str,
    files: dict[str, tuple[str, int, str | None]],
    version: int,
    parent: str | None,
    batches: dict[str, dict],
    stats: dict,
) -> dict:
    """A manifest with lineage: ``files`` maps path -> (sha256, size, batch id or None)."""
    entries = {}
    for p, (d, s, b) in sorted(files.items()):
        entries[p] = {"sha256": d, "size": s} | ({"batch": b} if b is not None else {})
    return {
        "format": FORMAT,
        "dataset": dataset,
        "version": version,
        "parent": parent,
        "files": entries,
        "root_digest": root_digest({p: (d, s) for p, (d, s, _) in files.items()}),
        "batches": batches,
        "stats": stats,
    }


def write(path: str | Path, manifest: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load(path: str | Path) -> dict:
    """Parse and check a manifest; anything malformed is refused (fail closed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"cannot read manifest {path}: {e.strerror}", "commit the dataset's manifest in the repository"
        ) from None
    m = untrusted.loads(raw, f"manifest {path}", "regenerate it with 'airlock data manifest'")
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise DataError(f"manifest {path} is not an {FORMAT} manifest", "regenerate it with 'airlock data manifest'")
    files = _entries(path, m["files"])
    # A manifest whose file list was edited without its root digest (or vice versa) is inconsistent.
    if m.get("root_digest") != root_digest(files):
        raise DataError(
            f"manifest {path}: root_digest does not match its file list", "regenerate it with 'airlock data manifest'"
        )
    _check_lineage(path, m)
    m["_files"] = files
    m["_path"] = str(path)
    return m


_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64_LINES = re.compile(r"(?:[0-9a-f]{64}\n)*")


def _entries(path: Path, entries: dict) -> dict[str, tuple[str, int]]:
    """path -> (sha256, size), every entry checked. Checked in bulk first (a dataset can have millions of files);
    the entry-by-entry loop only runs to name the first malformed one."""
    try:
        files = {name: (e["sha256"], e["size"]) for name, e in entries.items()}
        values = list(files.values())
        ok = (
            all(
                _HEX64_LINES.fullmatch("".join([d + "\n" for d, _ in values[i : i + 4096]])) is not None
                for i in range(0, len(values), 4096)
            )
            and all(type(s) is int and s >= 0 for _, s in values)
            and not any(_escapes(n) for n in files)
        )
    except (TypeError, KeyError):
        ok = False
    if ok:
        return files
    for name, entry in entries.items():
        ok = bool(
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _HEX64.fullmatch(entry["sha256"])
            and type(entry.get("size")) is int
            and entry["size"] >= 0
        )
        # A path escaping the dataset root ("../x", "/etc/x") could make the gate vouch for files elsewhere.
        if not ok or _escapes(name):
            raise DataError(
                f"manifest {path} has a malformed entry for {name!r}", "regenerate it with 'airlock data manifest'"
            )
    raise AssertionError("unreachable: a malformed entry was found in bulk but not one by one")


def _escapes(name: str) -> bool:
    return not name or name[0] == "/" or (".." in name and ".." in name.split("/"))


def _check_lineage(path: Path, m: dict) -> None:
    """The ingest fields, when present, are well-formed (a lineage that cannot be read is refused, not guessed)."""

    def bad(what: str) -> DataError:
        return DataError(f"manifest {path}: {what}", "restore it from the dataset's history or re-ingest the batch")

    version = m.get("version")
    if version is not None and (type(version) is not int or version < 1):
        raise bad(f"version {version!r} is not a positive integer")
    parent = m.get("parent")
    if parent is not None and not (isinstance(parent, str) and _DIGEST.match(parent)):
        raise bad(f"parent {parent!r} is not a root digest")
    # A later version without its parent would cut the lineage (and the label-shift baseline) silently.
    if version is not None and version > 1 and parent is None:
        raise bad(f"version {version} names no parent")
    if version == 1 and parent is not None:
        raise bad("version 1 names a parent")
    batches = m.get("batches", {})
    if not isinstance(batches, dict):
        raise bad("batches is not a map")
    for bid, b in batches.items():
        if not (
            isinstance(b, dict)
            and isinstance(b.get("source"), str)
            and isinstance(b.get("files"), list)
            and all(isinstance(f, str) for f in b["files"])
        ):
            raise bad(f"batch {bid!r} is malformed")
    for name, entry in m["files"].items():
        b = entry.get("batch")
        if b is not None and b not in batches:
            raise bad(f"file {name!r} names unknown batch {b!r}")
    if not isinstance(m.get("stats", {}), dict):
        raise bad("stats is not a map")
