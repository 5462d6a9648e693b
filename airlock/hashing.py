"""File-tree hashing shared by the data gate (dataset manifests) and the registry (model digests).

One digest definition for data and models: every regular file's sha256 and size, keyed by its POSIX path relative
to the root; the root digest is the sha256 of the sorted lines ``<sha256> <size> <path>\\n``. Symlinks and other
non-regular files are never followed or hashed: they are listed apart so that callers refuse them.

Hashing streams each file in 1 MiB blocks (constant memory) and runs files in parallel threads (hashlib releases
the GIL while it hashes).
"""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 1 << 20


def sha256_file(path: str | Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


@dataclass
class Tree:
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (sha256, size)
    symlinks: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)  # sockets, fifos, devices

    @property
    def root_digest(self) -> str:
        return root_digest(self.files)


def root_digest(files: dict[str, tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        digest, size = files[path]
        h.update(f"{digest} {size} {path}\n".encode())
    return "sha256:" + h.hexdigest()


def hash_tree(root: str | Path, workers: int | None = None) -> Tree:
    root = Path(root)
    tree = Tree()
    regular: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                tree.symlinks.append((rel_dir / name).as_posix())
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = (rel_dir / name).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                tree.symlinks.append(rel)
            elif stat.S_ISREG(st.st_mode):
                regular.append(rel)
            else:
                tree.special.append(rel)
    workers = workers or min(8, (os.cpu_count() or 1))
    if workers > 1 and len(regular) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for rel, res in zip(regular, pool.map(lambda r: sha256_file(root / r), regular)):
                tree.files[rel] = res
    else:
        for rel in regular:
            tree.files[rel] = sha256_file(root / rel)
    tree.symlinks.sort()
    tree.special.sort()
    return tree
