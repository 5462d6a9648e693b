"""Dataset manifests: the committed record of a dataset exactly as ingested.

Format (JSON, committed in the training repository next to the code, so the commit signature covers it)::

    {"format": "airlock-manifest/v1", "dataset": "train",
     "files": {"train_x.npy": {"sha256": "...", "size": 123}, ...},
     "root_digest": "sha256:..."}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from airlock.errors import DataError
from airlock.hashing import Tree, hash_tree, root_digest

FORMAT = "airlock-manifest/v1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def build(directory: str | Path, dataset: str) -> dict:
    tree = hash_tree(directory)
    if tree.symlinks or tree.special:
        raise DataError(f"{directory} holds links or special files: {', '.join(tree.symlinks + tree.special)}",
                        "replace them with regular files before writing a manifest")
    return to_manifest(tree, dataset)


def to_manifest(tree: Tree, dataset: str) -> dict:
    return {
        "format": FORMAT,
        "dataset": dataset,
        "files": {p: {"sha256": d, "size": s} for p, (d, s) in sorted(tree.files.items())},
        "root_digest": tree.root_digest,
    }


def write(path: str | Path, manifest: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load(path: str | Path) -> dict:
    """Parse and check a manifest; anything malformed is refused (fail closed)."""
    path = Path(path)
    try:
        m = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror}", "commit the dataset's manifest in the repository") from None
    except ValueError as e:
        raise DataError(f"manifest {path} is not JSON: {e}", "regenerate it with 'airlock data manifest'") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise DataError(f"manifest {path} is not an {FORMAT} manifest", "regenerate it with 'airlock data manifest'")
    files: dict[str, tuple[str, int]] = {}
    for name, entry in m["files"].items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _HEX64.match(entry["sha256"]) \
            and isinstance(entry.get("size"), int) and entry["size"] >= 0
        # A path escaping the dataset root ("../x", "/etc/x") could make the gate vouch for files elsewhere.
        if not ok or name.startswith("/") or ".." in Path(name).parts or not name:
            raise DataError(f"manifest {path} has a malformed entry for {name!r}", "regenerate it with 'airlock data manifest'")
        files[name] = (entry["sha256"], entry["size"])
    # A manifest whose file list was edited without its root digest (or vice versa) is inconsistent.
    if m.get("root_digest") != root_digest(files):
        raise DataError(f"manifest {path}: root_digest does not match its file list", "regenerate it with 'airlock data manifest'")
    m["_files"] = files
    return m
