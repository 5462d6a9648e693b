"""Parallel hashing: every path (threads, helper processes, large files after) gives the same tree, and a file
swapped for a link or a FIFO after the listing is reported as such, never followed or read."""

from __future__ import annotations

import hashlib
import os

import pytest

from airlock import _hashworker as w
from airlock import hashing


@pytest.fixture
def mixed(tmp_path):
    """1,200 small files in nested directories, two files above 1 MiB, a symlink and a FIFO."""
    root = tmp_path / "data"
    for i in range(1200):
        d = root / f"part-{i % 7}" / f"sub-{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i:04d}.bin").write_bytes(os.urandom(i % 5000))
    (root / "big-1.bin").write_bytes(os.urandom(3 << 20))
    (root / "part-0" / "big-2.bin").write_bytes(os.urandom((1 << 20) + 1))
    os.symlink(root / "big-1.bin", root / "part-1" / "link.bin")
    os.mkfifo(root / "part-2" / "pipe")
    return root


def reference(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    data = f.read()
                files[os.path.relpath(p, root)] = (hashlib.sha256(data).hexdigest(), len(data))
    return files


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_every_strategy_gives_the_same_tree(mixed, workers):
    t = hashing.hash_tree(mixed, workers=workers)
    assert t.files == reference(mixed)
    assert t.symlinks == ["part-1/link.bin"] and t.special == ["part-2/pipe"]
    assert t.root_digest == hashing.root_digest(reference(mixed))


def test_helper_processes_are_used_and_large_files_come_back(mixed):
    rels = sorted(reference(mixed))
    procs = hashing._start_helpers(mixed, 1)
    try:
        res = hashing._hash_small_with_helpers(mixed, rels, procs)
    finally:
        hashing._stop(procs)
    assert res is not None
    large = {r for r, v in zip(rels, res) if v is w.LARGE}
    assert large == {"big-1.bin", "part-0/big-2.bin"}  # left to the threads, not read by the helpers


def test_file_swapped_for_a_link_or_fifo_after_listing_is_never_followed_or_read(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "target").write_bytes(b"secret")
    os.symlink(d / "target", d / "link")
    os.mkfifo(d / "fifo")  # no writer: a blocking open or read would hang the gate
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert w.hash_one(fd, "link") is w.LINK
        assert w.hash_one(fd, "fifo") is w.SPECIAL
        assert w.hash_one(fd, "gone") is w.GONE
        assert w.hash_one(fd, "target") == (hashlib.sha256(b"secret").hexdigest(), 6)
    finally:
        os.close(fd)
