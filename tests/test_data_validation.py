"""Data validation: shape, dtype, range, label set, label shift and the golden pin each refuse with the numbers.

Each bad batch is ingested for real (airlock.ingest) as a new manifest version on top of scikit-learn's digits,
then judged by the gate as the flow judges it (gates.data_validation.check_manifest). Nothing is mocked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from airlock import ingest, manifest, policy
from airlock.errors import DataError, PolicyError
from airlock.ledger import Ledger
from airlock.policy import ValidationPolicy
from flows import demo
from gates import Verdict, data_validation

RULES = ValidationPolicy(
    x_shape=[1, 8, 8], x_dtype="float32", x_min=0.0, x_max=1.0, labels=list(range(10)), max_label_shift=0.10
)


class Dataset:
    def __init__(self, tmp_path, digits, name="train"):
        self.tmp, self.name = tmp_path, name
        self.dir = tmp_path / "data" / name
        self.manifest = tmp_path / "repo" / "manifests" / f"{name}.json"
        self.ledger = Ledger(tmp_path / "ledger.jsonl")
        self.batches = 0
        self.ingest(digits / name)

    def ingest(self, src, source="s3://bucket/batch"):
        self.batches += 1
        return ingest.ingest(
            self.name,
            src,
            data_dir=self.dir,
            manifest_path=self.manifest,
            ledger=self.ledger,
            source=f"{source}-{self.batches}",
        )

    def batch(self, **arrays) -> None:
        """Ingest a batch replacing the named files (e.g. train_x=array)."""
        b = self.tmp / f"batch{self.batches + 1}"
        b.mkdir()
        for stem, a in arrays.items():
            np.save(b / f"{stem}.npy", a, allow_pickle=False)
        self.ingest(b)

    def load(self, stem: str) -> np.ndarray:
        return np.load(self.dir / f"{stem}.npy")

    def check(self, rules=RULES, pinned=None):
        return data_validation.check_manifest(self.name, self.dir, self.manifest, rules, pinned)


@pytest.fixture
def train(tmp_path, digits):
    return Dataset(tmp_path, digits)


def test_clean_dataset_passes_every_rule(train):
    r = train.check()
    assert r.verdict is Verdict.PASS, r.reason
    assert "content of test, train matches the declared rules" in r.reason
    assert r.evidence["stats"]["train"]["y"]["labels"] == manifest.load(train.manifest)["stats"]["train"]["y"]["labels"]


def test_no_rules_declared_means_no_content_check(train):
    train.batch(train_x=train.load("train_x") * 16)
    r = train.check(ValidationPolicy())
    assert r.verdict is Verdict.PASS and "no content rules declared" in r.reason


def _shape(ds):
    x = ds.load("train_x")
    return {"train_x": x.reshape(len(x), 64)}, ["train_x.npy: one sample has shape (64,), the policy says (1, 8, 8)"]


def _dtype(ds):
    return {"train_x": ds.load("train_x").astype(np.float64)}, ["train_x.npy: dtype float64, the policy says float32"]


def _range(ds):
    x = ds.load("train_x") * 16.0  # raw 0..16 pixels: another pipeline's preprocessing
    above = int((x > 1.0).sum())
    return {"train_x": x}, [f"train_x.npy: {above} values outside [0, 1] (min 0, max 16; 0 below, {above} above)"]


def _nan(ds):
    x = ds.load("train_x")
    x[3, 0, 4, 4] = np.nan
    x[5, 0, 1, 1] = np.inf
    return {"train_x": x}, ["train_x.npy: 2 NaN/inf values"]


def _labels(ds):
    y = ds.load("train_y")
    y[:12] = 10  # an 11th class injected into a 10-class task
    return {"train_y": y}, ["train_y.npy: labels outside the allowed set {0..9}: 10 (12 samples)"]


def _misaligned(ds):
    y = ds.load("train_y")
    n = len(y)
    return {"train_y": y[:-1]}, [f"train_x.npy has shape ({n}, 1, 8, 8) but train_y.npy has ({n - 1},)"]


@pytest.mark.parametrize(
    "make",
    [_shape, _dtype, _range, _nan, _labels, _misaligned],
    ids=["shape", "dtype", "range", "nan", "label-set", "misaligned"],
)
def test_each_content_violation_is_refused_with_the_numbers(train, make):
    arrays, needles = make(train)
    train.batch(**arrays)
    r = train.check()
    assert r.verdict is Verdict.FAIL
    assert r.reason.startswith("dataset 'train' content refused — ")
    for n in needles:
        assert n in r.reason, (n, r.reason)
    json.dumps(r.to_dict(), allow_nan=False)  # the verdict goes to the ledger: no NaN anywhere


def test_label_shift_beyond_the_bound_is_refused_with_the_numbers(train):
    v1 = manifest.load(train.manifest)
    y = train.load("train_y")
    y[: len(y) // 4] = 7  # class 7 flooded: a quarter of the labels rewritten
    old, new = np.bincount(train.load("train_y"), minlength=10) / len(y), np.bincount(y, minlength=10) / len(y)
    tv = 0.5 * np.abs(old - new).sum()
    train.batch(train_y=y)
    r = train.check()
    assert r.verdict is Verdict.FAIL
    assert (
        f"split train: label distribution moved {tv:.3f} (total variation) from version 1 "
        f"({v1['root_digest'][:19]}…), the policy allows 0.1 — label 7 {old[7]:.1%} → {new[7]:.1%}"
    ) in r.reason
    assert "(train_y.npy)" in r.reason
    assert r.code == "data.content_refused", r.code
    assert r.metrics["label_shift:train"] == pytest.approx(tv, abs=1e-6) and r.metrics["label_shift:test"] == 0.0


def test_label_shift_within_the_bound_passes(train):
    y = train.load("train_y")
    y[:20] = (y[:20] + 1) % 10  # a vendor's relabelling of 20 samples
    train.batch(train_y=y)
    r = train.check()
    assert r.verdict is Verdict.PASS, r.reason
    assert 0 < r.metrics["label_shift:train"] <= 20 / len(y)
    assert "label shift" in r.reason and "vs version 1" in r.reason


def test_golden_set_swapped_with_its_manifest_is_refused_by_the_pin(tmp_path, digits):
    golden = Dataset(tmp_path, digits, "golden")
    pinned = manifest.load(golden.manifest)["root_digest"]
    assert golden.check(pinned=pinned).verdict is Verdict.PASS
    y = golden.load("golden_y")
    golden.batch(golden_y=(y + 1) % 10)  # swapped through the official path: manifest matches the data
    current = manifest.load(golden.manifest)["root_digest"]
    r = golden.check(pinned=pinned)
    assert r.verdict is Verdict.FAIL
    assert f"dataset 'golden' (golden.json) has root digest {current}, not the pinned {pinned}" in r.reason
    assert "data.golden.pinned_root_digest" in r.reason
    assert r.code == "data.pin_mismatch", r.code


def test_edited_recorded_stats_are_refused(train):
    doc = json.loads(train.manifest.read_text())
    doc["stats"]["train"]["y"]["labels"]["7"] += 100  # would fake the next version's label-shift baseline
    train.manifest.write_text(json.dumps(doc))
    r = train.check()
    assert r.verdict is Verdict.FAIL and "split train: the manifest's recorded stats do not match the data" in r.reason
    assert r.code == "data.content_refused", r.code


def test_parent_swapped_in_the_history_is_refused_naming_the_file(train):
    y = train.load("train_y")
    y[: len(y) // 4] = 7
    train.batch(train_y=y)
    # Move the baseline: replace version 1 in the history with one whose labels look like the new ones.
    hist = train.manifest.parent / "history" / "train" / "v1.json"
    fake = json.loads(train.manifest.read_text()) | {"version": 1, "parent": None}
    hist.write_text(json.dumps(fake))
    r = train.check()
    assert r.verdict is Verdict.FAIL
    assert "history/train/v1.json" in r.reason and "is not the parent named by version 2" in r.reason
    assert r.code == "data.lineage_broken", r.code


def test_unreadable_npy_is_refused_by_name(train, tmp_path):
    b = tmp_path / "junk"
    b.mkdir()
    (b / "test_x.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="test_x.npy is not a readable .npy file"):
        train.ingest(b)  # refused at ingest: nothing replaced
    assert train.check().verdict is Verdict.PASS


def test_demo_policy_declares_validation_and_bad_values_are_reported_by_key(tmp_path):
    p = tmp_path / "airlock.toml"
    p.write_text(demo.POLICY.replace("@GOLDEN_ROOT_DIGEST@", "sha256:" + "ab" * 32))
    pol = policy.load(p)
    assert pol.data.train.validation.max_label_shift == 0.10 and pol.data.golden.validation.labels == list(range(10))
    assert pol.data.golden.pinned_root_digest == "sha256:" + "ab" * 32
    for bad, key in (
        ("x_min = 0.0", "x_min = 2.0"),
        ('x_dtype = "float32"', 'x_dtype = "float33"'),
        ("max_label_shift = 0.10", "max_label_shift = 1.5"),
    ):
        p.write_text(demo.POLICY.replace("@GOLDEN_ROOT_DIGEST@", "sha256:" + "ab" * 32).replace(bad, key, 1))
        with pytest.raises(PolicyError, match="data.train.validate"):
            policy.load(p)
    p.write_text(demo.POLICY.replace("@GOLDEN_ROOT_DIGEST@", "sha256:short"))
    with pytest.raises(PolicyError, match="data.golden.pinned_root_digest"):
        policy.load(p)
