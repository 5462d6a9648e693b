"""Artifact-format gate: only safetensors weights and plain metadata leave the trainer."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from gates import Verdict, artifact


@pytest.fixture
def out(tmp_path, trained):
    d = tmp_path / "out"
    shutil.copytree(trained, d)
    return d


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_trainer_output_passes(out):
    r = artifact.check(out)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.evidence["tensors"] == 8


def test_pickle_renamed_safetensors_is_refused(out):
    (out / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    r = artifact.check(out)
    assert r.verdict is Verdict.FAIL
    assert "not a valid safetensors file" in r.reason
    assert r.code == "artifact.not_safetensors", r.code


def test_torch_save_zip_is_refused(out):
    torch.save({"w": torch.zeros(2)}, out / "model.safetensors")
    r = artifact.check(out)
    assert r.verdict is Verdict.FAIL
    assert "never torch.save/pickle" in r.reason
    assert r.code == "artifact.not_safetensors", r.code


def test_extra_file_is_refused(out):
    (out / "model.pt").write_bytes(b"x")
    r = artifact.check(out)
    assert r.verdict is Verdict.FAIL
    assert "unexpected: model.pt" in r.reason
    assert r.code == "artifact.unexpected_files", r.code


def test_symlinked_weights_are_refused(out, tmp_path):
    target = tmp_path / "w.safetensors"
    shutil.move(out / "model.safetensors", target)
    (out / "model.safetensors").symlink_to(target)
    r = artifact.check(out)
    assert r.verdict is Verdict.FAIL
    assert "unexpected: model.safetensors" in r.reason
    assert r.code == "artifact.unexpected_files", r.code


def test_lying_metadata_is_refused(out):
    meta = json.loads((out / "training.json").read_text())
    meta["nb_classes"] = "ten"
    (out / "training.json").write_text(json.dumps(meta))
    r = artifact.check(out)
    assert r.verdict is Verdict.FAIL
    assert "nb_classes" in r.reason
    assert r.code == "artifact.metadata_invalid", r.code


def test_missing_metadata_is_refused(out):
    (out / "training.json").unlink()
    r = artifact.check(out)
    assert r.verdict is Verdict.FAIL
    assert "missing: training.json" in r.reason
    assert r.code == "artifact.unexpected_files", r.code
