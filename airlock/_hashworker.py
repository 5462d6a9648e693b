"""Hashing one file safely, and the helper process that does it for :mod:`airlock.hashing`.

Kept to the standard library's ``os``, ``hashlib``, ``stat`` and ``errno`` so that a helper process
(``python -I -S -c ...``: no site, no environment, no team code) starts in a few milliseconds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

BLOCK = 1 << 20
SMALL = BLOCK  # files up to this size are read with a single read() call

# O_NOFOLLOW: a symlink is refused by the kernel instead of followed (ELOOP). O_NONBLOCK: opening a FIFO does not
# wait for a writer (we then see it is not a regular file and never read it); no effect on regular files.
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


class _Tag:
    def __init__(self, name: str, wire: bytes) -> None:
        self.name, self.wire = name, wire

    def __repr__(self) -> str:
        return self.name


LINK = _Tag("LINK", b"L")  # became a symlink after the listing: never followed
SPECIAL = _Tag("SPECIAL", b"S")  # became a FIFO / device / socket after the listing: never read
GONE = _Tag("GONE", b"G")  # removed after the listing
LARGE = _Tag("LARGE", b"B")  # above max_size: left to the caller (streamed in threads)
TAGS = {t.wire: t for t in (LINK, SPECIAL, GONE, LARGE)}


def hash_one(dir_fd: int, rel, max_size: int | None = None):
    """(sha256 hex, size) of ``rel`` under ``dir_fd``, or a tag. Never follows a link, never reads a FIFO."""
    try:
        fd = os.open(rel, OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return GONE
    except OSError as e:
        if e.errno == errno.ELOOP:
            return LINK
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return SPECIAL
        if max_size is not None and st.st_size > max_size:
            return LARGE
        if st.st_size <= SMALL:
            # One read for the whole file. Asking one byte more sees a file that grew since fstat; a short read of
            # a regular file is its end.
            data = os.read(fd, st.st_size + 1)
            if len(data) <= st.st_size:
                return hashlib.sha256(data).hexdigest(), len(data)
            h = hashlib.sha256(data)
            size = len(data)
        else:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            h = hashlib.sha256()
            size = 0
        # 1 MiB reads, each into a new buffer, as model_signing reads: on AMD EPYC one reused bytearray filled by
        # readv took ~1.5x as long in a fresh process (BENCHMARKS.md, "Data-gate hashing"); a second pass in the same
        # process was as fast either way. Not yet re-measured on Intel, where the reused buffer was already as fast.
        while data := os.read(fd, BLOCK):
            h.update(data)
            size += len(data)
        return h.hexdigest(), size
    finally:
        os.close(fd)


def main(root: str) -> None:
    """Helper process: stdin carries length-prefixed chunks of NUL-separated paths (relative to ``root``); stdout
    answers each chunk, length-prefixed, one line per path: ``<sha256> <size>``, a tag letter, or ``E <errno>``."""
    import sys

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    while header := inp.readline():
        payload = inp.read(int(header))
        lines = []
        for rel in payload.split(b"\0"):
            try:
                r = hash_one(dir_fd, rel, max_size=SMALL)
            except OSError as e:
                lines.append(b"E %d\n" % (e.errno or 0))
                continue
            lines.append(r.wire + b"\n" if isinstance(r, _Tag) else b"%s %d\n" % (r[0].encode(), r[1]))
        body = b"".join(lines)
        out.write(b"%d\n" % len(body) + body)
        out.flush()
