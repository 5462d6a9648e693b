"""The AIBOM records data hashes, preprocessing, hyperparameters and the commit, and validates as CycloneDX 1.6."""

from __future__ import annotations

import json
import shutil

from airlock import aibom, manifest


def test_aibom_records_the_run(tmp_path, trained, digits):
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    prov = {
        "run_id": "run-1",
        "commit": {"commit": "a" * 40, "signer": "dev@example.com", "key_fingerprint": "SHA256:x", "subject": "train"},
    }
    datasets = {
        "train": manifest.build(digits / "train", "train"),
        "golden": manifest.build(digits / "golden", "golden"),
    }
    path = aibom.write(model, prov, datasets, {"test_accuracy": 0.98})
    doc = json.loads(path.read_text())
    assert doc["specVersion"] == "1.6"
    comps = {c["bom-ref"]: c for c in doc["components"]}
    m = comps["model"]
    props = {p["name"]: p["value"] for p in m["properties"]}
    assert json.loads(props["airlock:hyperparameter:epochs"]) == 30
    assert props["airlock:preprocessing:0"].startswith("load_digits")
    assert m["modelCard"]["quantitativeAnalysis"]["performanceMetrics"] == [{"type": "test_accuracy", "value": "0.98"}]
    assert comps["training-code"]["version"] == "a" * 40
    train = comps["dataset-train"]
    assert train["version"] == datasets["train"]["root_digest"]
    files = {c["name"]: c["hashes"][0]["content"] for c in train["components"]}
    assert files["train_y.npy"] == datasets["train"]["files"]["train_y.npy"]["sha256"]
    assert any(c["name"] == "torch" and c["purl"].startswith("pkg:pypi/torch@") for c in doc["components"])
