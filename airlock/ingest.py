"""Data ingestion and lineage: every batch that enters a dataset is hashed, recorded and chained.

``airlock data ingest SRC --dataset NAME --source URI`` (:func:`ingest`):

1. refuses a batch holding symlinks or special files, and refuses to build on a dataset directory that no longer
   matches its current manifest (a new version must never launder tampered data);
2. copies the batch into the dataset directory, hashing each file *while it is copied* (the recorded sha256 is that
   of the bytes written, and must equal the batch's as first hashed);
3. writes manifest version N+1: every file with sha256, size and the batch that last wrote it, the root digest,
   ``parent`` = version N's root digest, the batches map (source, note, who, time, files, replaced) and split
   statistics (:mod:`airlock.datastats`); the same manifest is kept as ``history/<dataset>/v<N+1>.json`` beside it;
4. appends a ``data.ingest`` entry to the hash-chained ledger.

The manifest and its history are then committed (signed) with the code: the data gate reads them from the verified
commit. ``airlock data log`` (:func:`lineage`) walks the history and checks each version's parent link and its
ledger entry; ``airlock data trace`` (:func:`trace_rows`) lists, from a signed model's provenance, every file that
went into it with its batch and source.

``who`` is the OS user plus the repository's git ``user.email``: a claim recorded for people, not an authenticated
identity (the commit signature over the manifest is what authenticates it).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import getpass
import hashlib
import json
import os
import re
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from airlock import _hashworker as _w
from airlock import datastats
from airlock import manifest as _manifest
from airlock.errors import AirlockError, DataError, IngestRefused, LineageError
from airlock.hashing import BLOCK, Tree, hash_tree, root_digest
from airlock.ledger import Ledger

KIND = "data.ingest"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def history_dir(manifest_path: Path, dataset: str) -> Path:
    return Path(manifest_path).parent / "history" / dataset


def history_path(manifest_path: Path, dataset: str, version: int) -> Path:
    return history_dir(manifest_path, dataset) / f"v{version}.json"


def version_of(m: dict) -> int:
    """A manifest written by ``airlock data manifest`` (no ``version``) counts as version 1."""
    return int(m.get("version") or 1)


@dataclass(frozen=True)
class Ingested:
    dataset: str
    version: int
    root_digest: str
    parent: str | None
    batch: str
    files: list[str]
    replaced: list[str]
    manifest: Path
    history: Path
    ledger_seq: int


# -- ingest ----------------------------------------------------------------------------------------------------


def ingest(
    dataset: str,
    src: str | Path,
    *,
    data_dir: Path,
    manifest_path: Path,
    ledger: Ledger,
    source: str,
    note: str = "",
    repo: Path | None = None,
    who: str | None = None,
) -> Ingested:
    if not _NAME.match(dataset):
        raise DataError(f"dataset name {dataset!r} is not a plain name", "use letters, digits, '.', '_' or '-'")
    source = " ".join(str(source).split())
    if not source:
        raise DataError("no --source given for the batch", "say where the batch came from (a URI, a ticket, a person)")
    src, data_dir, manifest_path = Path(src), Path(data_dir), Path(manifest_path)
    _refuse_overlap(src, data_dir)
    batch_tree = _hash_batch(src)
    ledger.head()  # a broken ledger is refused before anything changes (raises LedgerError)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestRefused(f"another ingest into {data_dir} is running", "wait for it and ingest again") from None
        return _ingest_locked(
            dataset,
            src,
            batch_tree,
            data_dir,
            manifest_path,
            ledger,
            source,
            " ".join(note.split()),
            who or whoami(repo),
        )
    finally:
        os.close(lock_fd)


def _hash_batch(src: Path) -> Tree:
    try:
        st = os.lstat(src)
    except OSError as e:
        raise DataError(
            f"cannot read batch {src}: {e.strerror}", "pass the directory (or file) holding the new batch"
        ) from None
    # A linked batch could make the recorded bytes differ from what a later reader of the link sees.
    if stat.S_ISLNK(st.st_mode):
        raise IngestRefused(f"batch {src} is a symlink", "ingest the real directory or file, not a link to it")
    if stat.S_ISREG(st.st_mode):
        dir_fd = os.open(src.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            res = _w.hash_one(dir_fd, src.name)
        finally:
            os.close(dir_fd)
        if not isinstance(res, tuple):  # swapped for a link or a FIFO, or removed, since the lstat above
            raise IngestRefused(f"batch file {src} changed while it was hashed ({res!r})", "ingest it again")
        return Tree(files={src.name: res})
    if not stat.S_ISDIR(st.st_mode):
        raise IngestRefused(f"batch {src} is not a regular file or directory", "ingest regular files only")
    tree = hash_tree(src)
    # Links or FIFOs in a batch: a link can point the dataset at data outside it, a FIFO can feed different bytes
    # to the hasher and the copier. Never followed, never read, never ingested.
    if tree.symlinks or tree.special:
        bad = [f"{p} (symlink)" for p in tree.symlinks] + [f"{p} (not a regular file)" for p in tree.special]
        raise IngestRefused(
            f"batch {src} holds {', '.join(bad[:5])}" + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""),
            "replace links and special files with the real files, then ingest again",
        )
    if not tree.files:
        raise DataError(f"batch {src} holds no files", "pass the directory holding the new batch")
    return tree


def _refuse_overlap(src: Path, data_dir: Path) -> None:
    s, d = src.resolve(), data_dir.resolve()
    if s == d or d in s.parents or s in d.parents:
        raise DataError(
            f"batch {src} and dataset directory {data_dir} overlap",
            "stage the batch in a directory of its own, outside the dataset",
        )


def _ingest_locked(
    dataset: str,
    src: Path,
    batch_tree: Tree,
    data_dir: Path,
    manifest_path: Path,
    ledger: Ledger,
    source: str,
    note: str,
    who: str,
) -> Ingested:
    current: dict | None = None
    if manifest_path.exists():
        current = _manifest.load(manifest_path)
        if current.get("dataset") != dataset:
            raise IngestRefused(
                f"{manifest_path} is the manifest of dataset {current.get('dataset')!r}, not '{dataset}'",
                "check data.<name>.manifest in the policy",
            )
        _refuse_tampered(dataset, data_dir, manifest_path, current)
    elif any(data_dir.iterdir()):
        raise IngestRefused(
            f"dataset directory {data_dir} holds files but there is no manifest at {manifest_path}",
            "write one with 'airlock data manifest' (or empty the directory), then ingest",
        )
    parent_version = version_of(current) if current else 0
    version = parent_version + 1
    batch = f"b{version:04d}"
    old = {p: (e["sha256"], e["size"], e.get("batch")) for p, e in (current or {}).get("files", {}).items()}
    batch_files = sorted(batch_tree.files)
    _refuse_path_clashes(batch_files, old)
    replaced = {p: old[p][0] for p in batch_files if p in old}

    # A manifest from 'airlock data manifest' has no stats: take them from the data it describes (verified above)
    # before the batch lands, so that the next version's label shift has a baseline.
    before = datastats.dataset_stats(data_dir) if current is not None and "stats" not in current else None
    root = src.parent if src.is_file() else src
    # Every write goes to a temporary first; they are put in place together (_Swap) and taken back if the ledger
    # cannot record them. A full disk (or any write error) at any point leaves the dataset, its manifest and its
    # history exactly as they were, and the refusal says so in one line.
    swap = _Swap()
    try:
        return _write_version(
            swap, dataset, src, root, batch_tree, data_dir, manifest_path, ledger, current, before, old,
            batch_files, replaced, parent_version, version, batch, source, note, who,
        )  # fmt: skip
    except OSError as e:
        swap.rollback()
        raise IngestRefused(
            f"cannot write the batch into {data_dir}: {e.strerror or e}",
            "free space there and ingest again: nothing was ingested (the dataset and its manifest are as they were)",
        ) from None
    except BaseException:
        swap.rollback()
        raise
    finally:
        swap.done()


def _write_version(
    swap, dataset, src, root, batch_tree, data_dir, manifest_path, ledger, current, before, old,
    batch_files, replaced, parent_version, version, batch, source, note, who,
) -> Ingested:  # fmt: skip
    temps = {
        rel: swap.add(_copy_hashed(root / rel, data_dir / rel, batch_tree.files[rel]), data_dir / rel)
        for rel in batch_files
    }
    stats = datastats.dataset_stats(data_dir, overrides=temps)  # the dataset as it will be

    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    files = dict(old)
    for rel in batch_files:
        files[rel] = (*batch_tree.files[rel], batch)
    batches = dict((current or {}).get("batches", {}))
    batches[batch] = {
        "version": version,
        "source": source,
        "note": note,
        "who": who,
        "time": now,
        "files": batch_files,
        "replaced": replaced,
        "root_digest": batch_tree.root_digest,
    }
    parent = current["root_digest"] if current else None
    new = _manifest.versioned(dataset, files, version, parent, batches, stats)

    history = history_path(manifest_path, dataset, version)
    if current is not None and not history_path(manifest_path, dataset, parent_version).exists():
        # The current manifest (from 'airlock data manifest', or with its history file lost) becomes the parent's
        # history entry, so that the chain can be walked and the parent's stats compared.
        earlier = {k: v for k, v in current.items() if not k.startswith("_")}
        earlier.setdefault("version", 1)
        earlier.setdefault("parent", None)
        if before is not None:
            earlier["stats"] = before
        swap.write(history_path(manifest_path, dataset, parent_version), earlier)
    swap.write(history, new)
    swap.write(manifest_path, new)
    swap.apply()

    steps = [
        f"hashed {len(batch_files)} files of the batch in {src.resolve()}",
        f"copied them into {data_dir} (sha256 re-checked on the bytes written)",
    ]
    if replaced:
        steps.append(
            f"replaced {len(replaced)} earlier files: {', '.join(sorted(replaced)[:10])}"
            + (f" (+{len(replaced) - 10} more)" if len(replaced) > 10 else "")
        )
    if stats:
        steps.append(f"recorded stats of splits {', '.join(stats)}")
    steps.append(f"wrote manifest version {version} ({new['root_digest']}) and {history.name}")
    entry = ledger.append(
        KIND,
        {
            "dataset": dataset,
            "version": version,
            "root_digest": new["root_digest"],
            "parent": parent,
            "batch": batch,
            "batch_root_digest": batch_tree.root_digest,
            "source": source,
            "note": note,
            "who": who,
            "time": now,
            "files": len(batch_files),
            "bytes": sum(s for _, s in batch_tree.files.values()),
            "replaced": sorted(replaced),
            "manifest": str(manifest_path),
            "history": str(history),
            "steps": steps,
        },
    )
    return Ingested(
        dataset,
        version,
        new["root_digest"],
        parent,
        batch,
        batch_files,
        sorted(replaced),
        manifest_path,
        history,
        entry["seq"],
    )


def _refuse_tampered(dataset: str, data_dir: Path, manifest_path: Path, m: dict) -> None:
    """A new version is only built on data that still matches the current one."""
    tree = hash_tree(data_dir)
    expected = m["_files"]
    changed = sorted(p for p in set(expected) & set(tree.files) if expected[p] != tree.files[p])
    extra = sorted(set(tree.files) - set(expected))
    missing = sorted(set(expected) - set(tree.files) - set(tree.symlinks))
    problems = [
        f"{what}: {_names(paths)}"
        for what, paths in (
            ("changed", changed),
            ("extra", extra),
            ("missing", missing),
            ("symlinked", tree.symlinks),
            ("not regular files", tree.special),
        )
        if paths
    ]
    if problems:
        raise IngestRefused(
            f"dataset '{dataset}' in {data_dir} no longer matches {manifest_path.name} "
            f"({m['root_digest'][:19]}…): {'; '.join(problems)}",
            "restore the data as last ingested before adding a batch",
        )


def _refuse_path_clashes(batch_files: list[str], old: dict) -> None:
    existing_dirs = {str(Path(p).parent) for p in old} | {str(a) for p in old for a in Path(p).parents}
    for rel in batch_files:
        if rel in existing_dirs:
            raise IngestRefused(f"batch file {rel} would replace a directory of the dataset", "rename it in the batch")
        for a in Path(rel).parents:
            if str(a) != "." and str(a) in old:
                raise IngestRefused(
                    f"batch file {rel} would need {a}, a file of the dataset, to be a directory",
                    "rename it in the batch",
                )


class _Swap:
    """Files written as temporaries, put in place together, and taken back together: each replaced file is kept
    (a hard link, no space) until the ingest is recorded."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary, destination)
        self.applied: list[tuple[Path, Path | None]] = []  # (destination, the kept original or None if new)

    def add(self, tmp: Path, dst: Path) -> Path:
        self.pending.append((tmp, dst))
        return tmp

    def write(self, dst: Path, manifest: dict) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.ingest-{uuid.uuid4().hex}.tmp"
        self.add(tmp, dst)
        with open(tmp, "x") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def apply(self) -> None:
        while self.pending:
            tmp, dst = self.pending[0]
            kept = None
            if dst.exists():
                kept = dst.parent / f".{dst.name}.ingest-kept-{uuid.uuid4().hex}"
                os.link(dst, kept)
            os.replace(tmp, dst)
            self.pending.pop(0)
            self.applied.append((dst, kept))

    def rollback(self) -> None:
        for dst, kept in reversed(self.applied):
            if kept is not None:
                os.replace(kept, dst)
            else:
                dst.unlink(missing_ok=True)
        self.applied.clear()

    def done(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        for _, kept in self.applied:
            if kept is not None:
                kept.unlink(missing_ok=True)
        self.pending.clear()
        self.applied.clear()


def _copy_hashed(src: Path, dst: Path, expected: tuple[str, int]) -> Path:
    """Copy to a temporary file beside ``dst``, hashing the bytes as they are written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.ingest-{uuid.uuid4().hex}.tmp"
    h, size = hashlib.sha256(), 0
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IngestRefused(f"batch file {src} is not a regular file", "ingest regular files only")
        with open(tmp, "xb") as out:
            while n := os.readv(fd, (buf,)):
                h.update(view[:n])
                out.write(view[:n])
                size += n
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    # The batch changed between hashing and copying: what would be recorded is not what was looked at.
    if (h.hexdigest(), size) != expected:
        tmp.unlink(missing_ok=True)
        raise IngestRefused(
            f"batch file {src} changed while it was ingested", "make sure nothing writes the batch, then ingest again"
        )
    return tmp


# -- lineage -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    version: int
    root_digest: str
    parent: str | None
    path: Path  # the history file (or the manifest itself, if it was never ingested on)
    batch_id: str | None  # the batch this version added (None: written by 'airlock data manifest')
    batch: dict | None
    files: int
    ledger_seq: int | None  # the matching data.ingest entry in the ledger


def lineage(dataset: str, manifest_path: Path, ledger: Ledger) -> list[Version]:
    """Every version of a dataset, oldest first, each checked against its parent and its ledger entry."""
    manifest_path = Path(manifest_path)
    current = _manifest.load(manifest_path)
    last = version_of(current)
    logged: dict[int, dict] = {}
    for e in ledger.entries():  # verifies the chain as it reads (LedgerError on a break)
        d = e.get("data") or {}
        if e.get("kind") == KIND and d.get("dataset") == dataset and isinstance(d.get("version"), int):
            logged[d["version"]] = e
    out: list[Version] = []
    prev: str | None = None
    for k in range(1, last + 1):
        path = history_path(manifest_path, dataset, k)
        if not path.exists() and k == last and "version" not in current:
            m, path = current, manifest_path  # a manifest never ingested on: version 1, no history yet
        elif not path.exists():
            raise LineageError(
                f"{path} is missing: version {k} of dataset '{dataset}' is not in its history",
                "restore the file from the repository's git history",
            )
        else:
            m = _manifest.load(path)
        if version_of(m) != k or m.get("dataset") != dataset:
            raise LineageError(
                f"{path} holds version {version_of(m)} of dataset {m.get('dataset')!r}, expected "
                f"version {k} of '{dataset}'",
                "restore the file from the repository's git history",
            )
        # A version whose parent is not the previous version's root digest: history rewritten or spliced.
        if m.get("parent") != prev:
            raise LineageError(
                f"{path}: parent {m.get('parent')} is not the root digest of version {k - 1} ({prev})",
                "the history was rewritten: restore it from the repository's git history",
            )
        bid, batch = next(((i, b) for i, b in m.get("batches", {}).items() if b.get("version") == k), (None, None))
        seq = None
        if batch is not None:
            own = {p: (e["sha256"], e["size"]) for p, e in m["files"].items() if e.get("batch") == bid}
            # The batch's recorded digest must be that of the files it brought (a file list edited afterwards).
            if sorted(own) != sorted(batch["files"]) or root_digest(own) != batch.get("root_digest"):
                raise LineageError(
                    f"{path}: batch {bid}'s files do not match its recorded digest {batch.get('root_digest')}",
                    "the history was edited: restore it from git history",
                )
            entry = logged.get(k)
            if (
                entry
                and entry["data"].get("root_digest") == m["root_digest"]
                and entry["data"].get("batch") == bid
                and entry["data"].get("batch_root_digest") == batch.get("root_digest")
            ):
                seq = entry["seq"]
        out.append(Version(k, m["root_digest"], m.get("parent"), path, bid, batch, len(m["files"]), seq))
        prev = m["root_digest"]
    if prev != current["root_digest"]:
        raise LineageError(
            f"{manifest_path} ({current['root_digest'][:19]}…) is not version {last} of its history "
            f"({prev and prev[:19]}…)",
            "restore the manifest or its history from git history",
        )
    return out


def load_parent(manifest_path: Path, m: dict) -> dict | None:
    """The previous version of a manifest, from the history beside it, checked against the ``parent`` link."""
    if m.get("parent") is None:
        return None
    k = version_of(m) - 1
    path = history_path(manifest_path, m["dataset"], k)
    try:
        parent = _manifest.load(path)
    except AirlockError as e:
        raise LineageError(
            f"version {k + 1} of dataset '{m['dataset']}' names parent {m['parent'][:19]}… but "
            f"its history file is unusable: {e.what}",
            "commit manifests/history with the manifest",
        ) from None
    # A parent swapped for a doctored one would move the label-shift baseline.
    if parent["root_digest"] != m["parent"] or version_of(parent) != k:
        raise LineageError(
            f"{path} (version {version_of(parent)}, {parent['root_digest'][:19]}…) is not the parent "
            f"named by version {k + 1} ({m['parent'][:19]}…)",
            "restore the history from git history",
        )
    return parent


# -- trace -------------------------------------------------------------------------------------------------------


def provenance_entry(m: dict, manifest_in_commit: str) -> dict:
    """What a signed model records about one dataset: enough to answer "which files, from where" on its own."""
    files = {
        p: {"sha256": e["sha256"], "size": e["size"], "batch": e.get("batch")} for p, e in sorted(m["files"].items())
    }
    used = {e["batch"] for e in files.values() if e["batch"]}
    batches = {
        bid: {k: b.get(k) for k in ("version", "source", "note", "who", "time", "root_digest")}
        for bid, b in sorted(m.get("batches", {}).items())
        if bid in used
    }
    return {
        "manifest": manifest_in_commit,
        "root_digest": m["root_digest"],
        "version": version_of(m),
        "parent": m.get("parent"),
        "file_count": len(files),
        "files": files,
        "batches": batches,
    }


def trace_rows(provenance: dict) -> list[dict]:
    rows = []
    for name, ds in sorted((provenance.get("datasets") or {}).items()):
        files = ds.get("files")
        if not isinstance(files, dict):
            raise LineageError(
                f"the model's provenance has no per-file record of dataset '{name}'",
                "the model predates per-file provenance: retrain it to trace its data",
            )
        batches = ds.get("batches") or {}
        for path, e in sorted(files.items()):
            b = batches.get(e.get("batch")) or {}
            rows.append(
                {
                    "dataset": name,
                    "version": ds.get("version"),
                    "path": path,
                    "sha256": e["sha256"],
                    "size": e["size"],
                    "batch": e.get("batch"),
                    "source": b.get("source"),
                    "ingested": b.get("time"),
                    "who": b.get("who"),
                }
            )
    return rows


def whoami(repo: Path | None = None) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    email = ""
    if repo is not None:
        try:
            email = subprocess.run(
                ["git", "-C", str(repo), "config", "--get", "user.email"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            email = ""
    return f"{user} <{email}>" if email else user


def _names(paths: list[str], limit: int = 5) -> str:
    return ", ".join(paths[:limit]) + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")
