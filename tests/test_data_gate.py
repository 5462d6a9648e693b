"""Data gate: changed, added, removed and symlinked files are each refused by name."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from airlock import manifest
from gates import Verdict, data


@pytest.fixture
def dataset(tmp_path, digits):
    d = tmp_path / "train"
    shutil.copytree(digits / "train", d)
    m = tmp_path / "train.json"
    manifest.write(m, manifest.build(d, "train"))
    return d, m


def test_matching_dataset_passes(dataset):
    d, m = dataset
    r = data.check("train", d, m)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.evidence["actual_root_digest"] == r.evidence["expected_root_digest"]
    assert r.metrics["files"] == 4


def test_poisoned_file_is_refused_by_name(dataset):
    d, m = dataset
    y = np.load(d / "train_y.npy")
    y[:10] = (y[:10] + 1) % 10  # flipped labels: classic poisoning
    np.save(d / "train_y.npy", y)
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "changed: train_y.npy" in r.reason
    assert r.code == "data.mismatch", r.code
    assert r.evidence["changed"] == ["train_y.npy"]


def test_injected_file_is_refused_by_name(dataset):
    d, m = dataset
    (d / "extra_x.npy").write_bytes(b"\x93NUMPY")
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "extra: extra_x.npy" in r.reason
    assert r.code == "data.mismatch", r.code


def test_removed_file_is_refused_by_name(dataset):
    d, m = dataset
    (d / "test_y.npy").unlink()
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "missing: test_y.npy" in r.reason
    assert r.code == "data.mismatch", r.code


def test_symlink_with_identical_content_is_still_refused(dataset, tmp_path):
    d, m = dataset
    outside = tmp_path / "elsewhere.npy"
    shutil.copy2(d / "train_x.npy", outside)
    (d / "train_x.npy").unlink()
    os.symlink(outside, d / "train_x.npy")
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "symlinked: train_x.npy" in r.reason
    assert "missing" not in r.reason
    assert r.code == "data.mismatch", r.code


def test_fifo_is_refused_without_being_read(dataset):
    d, m = dataset
    os.mkfifo(d / "pipe")
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "not regular files: pipe" in r.reason
    assert r.code == "data.mismatch", r.code


def test_manifest_edited_without_root_digest_is_refused(dataset):
    d, m = dataset
    doc = json.loads(m.read_text())
    doc["files"]["train_y.npy"]["size"] += 1
    m.write_text(json.dumps(doc))
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "root_digest does not match" in r.reason
    assert r.code == "data.unreadable", r.code


def test_manifest_path_escaping_the_dataset_is_refused(dataset):
    d, m = dataset
    doc = json.loads(m.read_text())
    doc["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1}
    m.write_text(json.dumps(doc))
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "malformed entry" in r.reason
    assert r.code == "data.unreadable", r.code


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"format": "other"}'])
def test_unparseable_manifest_is_refused(dataset, content):
    d, m = dataset
    m.write_text(content)
    r = data.check("train", d, m)
    assert r.verdict is Verdict.FAIL
    assert "manifest" in r.reason
    assert r.code == "data.unreadable", r.code


def test_missing_dataset_directory_is_refused(dataset, tmp_path):
    _, m = dataset
    r = data.check("train", tmp_path / "nope", m)
    assert r.verdict is Verdict.FAIL
    assert "missing" in r.reason
    assert r.code == "data.missing", r.code
