"""File-tree hashing shared by the data gate (dataset manifests) and the registry (model digests).

One digest definition for data and models: every regular file's sha256 and size, keyed by its POSIX path relative
to the root; the root digest is the sha256 of the sorted lines ``<sha256> <size> <path>\\n``, with every path
canonical (:func:`name_problem`), so that the lines decode one way only. Symlinks and other
non-regular files are never followed or hashed: they are listed apart so that callers refuse them.

Speed and memory (numbers in BENCHMARKS.md, "Data-gate hashing"):

* the tree is listed with ``os.scandir`` (file types from the directory entries, no ``stat`` per file);
* few files (fewer than 1,000): worker threads, one per usable core (at most 8), take files one at a time from a
  shared index; hashlib releases the GIL while it hashes and ``read`` while it copies, so large files spread over
  the cores;
* many files: per-file Python work would serialise threads on the GIL, so files up to 1 MiB are shared, in chunks,
  between the calling thread and one helper process per other core (airlock/_hashworker.py in ``python -I -S``,
  started while the listing goes on); larger files come back and are streamed in threads;
* a file up to 1 MiB is read with one ``read`` call; a larger one streams in 1 MiB reads, so memory stays
  constant whatever the file or dataset size (it grows only with the number of file names).

Every file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` on the open descriptor: a file
swapped for a symlink or a FIFO between the listing and the read is reported as such and never read.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from airlock import _hashworker as _w
from airlock.errors import DataError, UnsafeNameError

BLOCK = _w.BLOCK


def sha256_file(path: str | Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while data := f.read(BLOCK):  # a new buffer per read: see _hashworker.hash_one
            h.update(data)
            size += len(data)
    return h.hexdigest(), size


@dataclass
class Tree:
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (sha256, size)
    symlinks: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)  # sockets, fifos, devices

    @property
    def root_digest(self) -> str:
        return root_digest(self.files)


# The root digest's lines ``<64 hex> <size> <path>\n`` decode one way only if no path holds a line break (a file
# named "x\n<sha> 7 y" would otherwise digest like the two files x and y) and every path has one spelling. So a
# name is refused wherever a digest is computed unless it is canonical: no control or line-separator characters,
# NFC Unicode, valid UTF-8, and no empty, "." or ".." component (no "a//b", "./a", "a/", "/a").
_BAD_CHARS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\x85\u2028\u2029]")
_BAD_PATH = re.compile(r"^[^ \n]* [^ \n]* (?:$|/|\.{1,2}(?:/|$)|.*?(?://|/\.{1,2}(?:/|$)|/$))", re.M)
_HEX64 = re.compile(r"[0-9a-f]{64}")
NAME_RULE = "no line breaks or control characters, NFC Unicode, no empty, '.' or '..' path components"


def name_problem(name: str) -> str | None:
    """Why ``name`` (a POSIX path relative to a root) is not canonical, or None."""
    import unicodedata

    if not isinstance(name, str) or not name:
        return "it is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if "\n" in name or _BAD_CHARS.search(name):
        return "it holds a line break or a control character"
    if not unicodedata.is_normalized("NFC", name):
        return "it is not in Unicode normal form (NFC)"
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        return "it has an empty, '.' or '..' component"
    return None


def root_digest(files: dict[str, tuple[str, int]]) -> str:
    import unicodedata

    h = hashlib.sha256()
    items = sorted(files.items())
    for i in range(0, len(items), 4096):  # in slices: fast, without a second copy of the whole list
        chunk = items[i : i + 4096]
        text = "".join([f"{d} {s} {path}\n" for path, (d, s) in chunk])
        # Checked in bulk (a dataset can have millions of names); one by one only to name the offender.
        try:
            data = text.encode()
        except UnicodeEncodeError:
            data = None
        if (
            data is None
            or text.count("\n") != len(chunk)
            or _BAD_CHARS.search(text)
            or _BAD_PATH.search(text)
            or not unicodedata.is_normalized("NFC", text)
        ):
            for path, (d, size) in chunk:
                why = name_problem(path)
                if why:
                    raise UnsafeNameError(
                        f"file name {path!r} cannot be recorded unambiguously: {why}", f"rename it ({NAME_RULE})"
                    )
                if not (isinstance(d, str) and _HEX64.fullmatch(d) and type(size) is int and size >= 0):
                    raise UnsafeNameError(
                        f"the entry for {path!r} has no valid sha256 and size", "regenerate the manifest"
                    )
            raise UnsafeNameError("a file list cannot be recorded unambiguously", "regenerate the manifest")
        h.update(data)
    return "sha256:" + h.hexdigest()


def hash_tree(root: str | Path, workers: int | None = None, meanwhile=None) -> Tree:
    """Hash every regular file under ``root``. ``meanwhile``: a function called once in this thread, while helper
    processes hash (e.g. parsing the manifest the tree will be compared with); its exception stops the hashing and
    is raised."""
    root = Path(root)
    tree = Tree()
    workers = max(1, min(workers or _usable_cores(), 8))
    helpers: list = []
    try:
        # Helper processes start (in parallel with the rest of the listing) once there are many files.
        regular = _list(
            root, tree, on_many=(lambda: helpers.extend(_start_helpers(root, workers - 1))) if workers > 1 else None
        )
        results = _hash_all(root, regular, min(workers, max(1, len(regular))), helpers, meanwhile)
    finally:
        _stop(helpers)
    if all(type(res) is tuple for res in results):  # the usual case: every file hashed
        tree.files = dict(zip(regular, results))
    else:
        for rel, res in zip(regular, results):
            if res is None or res is _w.LARGE:
                raise AssertionError(f"hashing left {rel} unhashed")  # never a silent gap in the tree
            if res is _w.LINK:  # became a symlink after the listing: never followed
                tree.symlinks.append(rel)
            elif res is _w.SPECIAL:  # became a FIFO / device after the listing: never read
                tree.special.append(rel)
            elif res is not _w.GONE:  # removed after the listing: simply absent (the gate reports it missing)
                tree.files[rel] = res
    tree.symlinks.sort()
    tree.special.sort()
    return tree


# -- implementation ----------------------------------------------------------------------------------------------

_PROCESS_MIN_FILES = 1000  # from this many files on, small files are also hashed by helper processes
_CHUNK = (16, 256)  # paths per request to a helper process: about 1/8 of a worker's share, within bounds
_ALL_HASHED = re.compile(rb"(?:[0-9a-f]{64} [0-9]+\n)*")
_HELPER = "import sys; sys.path.insert(0, sys.argv[1]); from airlock._hashworker import main; main(sys.argv[2])"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _list(root: Path, tree: Tree, on_many=None) -> list[str]:
    """Regular files (relative POSIX paths); links and special files go to the tree's lists, never followed.
    ``on_many`` is called once, when the listing reaches _PROCESS_MIN_FILES files."""
    regular: list[str] = []
    stack = [("", str(root))]
    while stack:
        prefix, path = stack.pop()
        try:
            with os.scandir(path) as entries:
                for e in entries:
                    rel = prefix + e.name
                    if e.is_file(follow_symlinks=False):  # a regular file, not a link to one
                        regular.append(rel)
                        if len(regular) == _PROCESS_MIN_FILES and on_many is not None:
                            on_many()
                    elif e.is_dir(follow_symlinks=False):
                        stack.append((rel + "/", e.path))
                    elif e.is_symlink():
                        tree.symlinks.append(rel)
                    else:
                        tree.special.append(rel)
        except OSError as e:
            raise DataError(
                f"cannot list {path}: {e.strerror or e}", "check the directory's permissions and storage"
            ) from None
    return regular


def _hash_all(root: Path, rels: list[str], workers: int, helpers: list, meanwhile=None) -> list:
    """Few files: threads (hashlib and read release the GIL on large buffers, so large files spread over the
    cores). Many files: the per-file Python work would serialise threads on the GIL, so files up to 1 MiB are
    shared between this thread and ``workers - 1`` helper processes, and the larger ones streamed in threads after."""
    if helpers and len(rels) >= _PROCESS_MIN_FILES:
        results = _hash_small_with_helpers(root, rels, helpers, meanwhile)
        if results is not None:
            large = [i for i, r in enumerate(results) if r is _w.LARGE]
            if large:
                for i, r in zip(large, _hash_in_threads(root, [rels[i] for i in large], min(workers, len(large)))):
                    results[i] = r
            return results
    elif meanwhile is not None:
        meanwhile()
    return _hash_in_threads(root, rels, workers)


def _hash_in_threads(root: Path, rels: list[str], workers: int) -> list:
    results: list = [None] * len(rels)
    if not rels:
        return results
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    indices = iter(range(len(rels)))
    lock = threading.Lock()
    errors: list[tuple[str, OSError]] = []

    def work() -> None:
        while not errors:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            try:
                results[i] = _w.hash_one(dir_fd, rels[i])
            except OSError as e:
                errors.append((rels[i], e))

    try:
        threads = [threading.Thread(target=work, name=f"airlock-hash-{n}", daemon=True) for n in range(workers - 1)]
        for t in threads:
            t.start()
        work()  # the calling thread is one of the workers
        for t in threads:
            t.join()
    finally:
        os.close(dir_fd)
    if errors:
        _raise(root, *errors[0])
    return results


def _raise(root: Path, rel: str, e: OSError):
    raise DataError(f"cannot read {root / rel}: {e.strerror or e}", "check the file's permissions and storage")


def _start_helpers(root: Path, n: int) -> list:
    """``n`` helper processes: airlock/_hashworker.py in a fresh ``python -I -S`` (no site, no environment, no team
    code). None started if one cannot be (the caller then hashes in threads)."""
    cmd = [sys.executable, "-I", "-S", "-c", _HELPER, str(Path(_w.__file__).resolve().parents[1]), str(root)]
    procs: list = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            )
    except OSError:
        _stop(procs)
        return []
    return procs


def _hash_small_with_helpers(root: Path, rels: list[str], procs: list, meanwhile=None) -> list | None:
    """Files up to 1 MiB hashed by this thread (after ``meanwhile()``) and the helper processes, taking chunks of
    paths from a shared index; larger files come back as LARGE. Returns None if a helper answers anything malformed
    or dies: the caller then hashes everything in this process (never a partial answer)."""
    results: list = [None] * len(rels)
    chunk = max(_CHUNK[0], min(_CHUNK[1], len(rels) // ((len(procs) + 1) * 8)))
    starts = iter(range(0, len(rels), chunk))
    lock = threading.Lock()
    errors: list[tuple[str, OSError]] = []
    failed: list[str] = []

    def take() -> int | None:
        with lock:
            return None if errors or failed else next(starts, None)

    def drive(proc) -> None:
        sent: list[int] = []  # chunks sent, not yet answered: kept 2 deep so the helper never idles

        def send() -> None:
            start = take()
            if start is not None:
                payload = b"\0".join(os.fsencode(r) for r in rels[start : start + chunk])
                proc.stdin.write(b"%d\n" % len(payload) + payload)
                proc.stdin.flush()
                sent.append(start)

        try:
            send()
            send()
            while sent:
                start = sent.pop(0)
                header = proc.stdout.readline()
                body = proc.stdout.read(int(header)) if header[:-1].isdigit() else b""
                idx = range(start, min(start + chunk, len(rels)))
                if _ALL_HASHED.fullmatch(body):  # the usual answer: parsed in bulk
                    parts = body.decode().split()
                    if len(parts) == 2 * len(idx):
                        results[idx.start : idx.stop] = zip(parts[0::2], map(int, parts[1::2]))
                        send()
                        continue
                lines = body.split(b"\n")[:-1]
                if len(lines) != len(idx):
                    failed.append("malformed answer")
                    return
                for i, line in zip(idx, lines):
                    tag = _w.TAGS.get(line)
                    if tag is not None:
                        results[i] = tag
                    elif line[:2] == b"E ":
                        code = int(line[2:])
                        errors.append((rels[i], OSError(code, os.strerror(code))))
                    else:
                        digest, size = line.split(b" ")
                        if len(digest) != 64:
                            raise ValueError("malformed digest")
                        results[i] = (digest.decode(), int(size))
                send()
        except (OSError, ValueError) as e:
            failed.append(f"{type(e).__name__}: {e}")

    threads = [
        threading.Thread(target=drive, args=(p,), name=f"airlock-hash-helper-{n}", daemon=True)
        for n, p in enumerate(procs)
    ]
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for t in threads:
            t.start()
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                failed.append("stopped: meanwhile() failed")  # the drivers send nothing more
                raise
        # This thread works too (it has no start-up to wait for), from the same shared index.
        while (start := take()) is not None:
            for i in range(start, min(start + chunk, len(rels))):
                try:
                    results[i] = _w.hash_one(dir_fd, rels[i], max_size=_w.SMALL)
                except OSError as e:
                    errors.append((rels[i], e))
    finally:
        for t in threads:
            t.join()
        os.close(dir_fd)
    if errors:
        _raise(root, *errors[0])
    if failed or any(r is None for r in results):
        return None
    return results


def _stop(procs: list) -> None:
    """Close the helpers' input (they exit at its end) and reap them in the background: their interpreter
    shutdown is not worth waiting for. One that has not exited after 10 s is killed."""
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
        p.stdout.close()
    if procs:
        threading.Thread(target=_reap, args=(list(procs),), name="airlock-hash-reaper", daemon=True).start()


def _reap(procs: list) -> None:
    for p in procs:
        try:
            p.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a helper that does not exit is killed
            p.kill()
            p.wait()
