"""Data ingestion and lineage: versions chained by parent digest, provenance in the ledger, refusals by file name.

Real files, a real git repository and real keys (the demo's work directory, built by flows.demo.build), the real
`airlock` command in a subprocess. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from airlock import ingest, manifest, policy
from airlock.ledger import Ledger
from flows import demo
from gates import Verdict, data
from registry import Registry
from tests.conftest import assert_one_line_refusal, run_cli, sign_model


@pytest.fixture
def work(tmp_path):
    """The demo's layout: policy, signed repo, keys, and train/golden ingested as version 1."""
    paths = demo.build(tmp_path / "demo")
    paths["pol"] = policy.load(paths["policy"])
    return paths


def ingest_train(work, src, source="s3://data/batch-2", note=""):
    ds = work["pol"].data.train
    return ingest.ingest(
        "train",
        src,
        data_dir=ds.dir,
        manifest_path=ds.manifest,
        ledger=Ledger(work["ledger"]),
        source=source,
        note=note,
        repo=work["repo"],
    )


@pytest.fixture
def batch2(work, tmp_path):
    """A second batch: new training labels (replacing the old file) and an extra split."""
    b = tmp_path / "batch2"
    b.mkdir()
    y = np.load(work["pol"].data.train.dir / "train_y.npy")
    y[:20] = (y[:20] + 1) % 10
    np.save(b / "train_y.npy", y)
    (b / "notes").mkdir()
    (b / "notes" / "README.txt").write_text("relabelled by vendor X\n")
    return b


def test_ingest_creates_version_2_chained_to_version_1_and_logs_provenance(work, batch2):
    ds = work["pol"].data.train
    v1 = manifest.load(ds.manifest)
    assert v1["version"] == 1 and v1["parent"] is None and set(v1["batches"]) == {"b0001"}

    r = ingest_train(work, batch2, note="vendor relabel")
    m = manifest.load(ds.manifest)
    assert (r.version, m["version"], m["parent"], r.parent) == (2, 2, v1["root_digest"], v1["root_digest"])
    assert r.replaced == ["train_y.npy"] and r.files == ["notes/README.txt", "train_y.npy"]
    assert m["files"]["train_y.npy"]["batch"] == "b0002" and m["files"]["train_x.npy"]["batch"] == "b0001"
    b = m["batches"]["b0002"]
    assert b["source"] == "s3://data/batch-2" and b["note"] == "vendor relabel" and b["who"]
    assert b["replaced"] == {"train_y.npy": v1["files"]["train_y.npy"]["sha256"]}
    assert set(m["stats"]) == {"train", "test"} and sum(m["stats"]["train"]["y"]["labels"].values()) == len(
        np.load(ds.dir / "train_y.npy")
    )
    # History beside the manifest: v1 as it was, v2 identical to the current manifest.
    hist = ds.manifest.parent / "history" / "train"
    assert json.loads((hist / "v2.json").read_text()) == json.loads(ds.manifest.read_text())
    assert manifest.load(hist / "v1.json")["root_digest"] == v1["root_digest"]
    # The dataset directory is exactly the new manifest.
    assert data.check("train", ds.dir, ds.manifest).verdict is Verdict.PASS
    # Provenance entry in the hash-chained ledger: source, time, who, steps, parent.
    entries = [e for e in Ledger(work["ledger"]).entries() if e["kind"] == "data.ingest"]
    last = entries[-1]["data"]
    assert (last["dataset"], last["version"], last["parent"], last["root_digest"]) == (
        "train",
        2,
        v1["root_digest"],
        m["root_digest"],
    )
    assert last["source"] == "s3://data/batch-2" and last["who"] and last["time"] and last["steps"]
    assert any("replaced 1 earlier files: train_y.npy" in s for s in last["steps"])
    Ledger(work["ledger"]).verify()


def test_batch_altered_after_ingest_is_refused_by_the_data_gate_naming_the_file(work, batch2):
    ingest_train(work, batch2)
    ds = work["pol"].data.train
    y = np.load(ds.dir / "train_y.npy")
    y[-5:] = 3  # poisoned after ingestion, outside the pipeline
    np.save(ds.dir / "train_y.npy", y)
    r = data.check("train", ds.dir, ds.manifest)
    assert r.verdict is Verdict.FAIL and "changed: train_y.npy" in r.reason


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_ingest_refuses_links_and_special_files_in_the_batch(work, batch2, tmp_path, kind):
    outside = tmp_path / "outside.npy"
    shutil.copy2(batch2 / "train_y.npy", outside)
    if kind == "symlink":
        os.symlink(outside, batch2 / "train_x.npy")
    else:
        os.mkfifo(batch2 / "train_x.npy")
    before = work["pol"].data.train.manifest.read_bytes()
    with pytest.raises(ingest.IngestRefused, match="train_x.npy") as e:
        ingest_train(work, batch2)
    assert ("symlink" if kind == "symlink" else "not a regular file") in e.value.one_line()
    # Nothing changed: manifest, data and ledger are as before.
    assert work["pol"].data.train.manifest.read_bytes() == before
    assert data.check("train", work["pol"].data.train.dir, work["pol"].data.train.manifest).passed
    assert [e["kind"] for e in Ledger(work["ledger"]).entries()] == ["data.ingest", "data.ingest"]


def test_ingest_refuses_to_build_on_tampered_data(work, batch2):
    ds = work["pol"].data.train
    (ds.dir / "test_x.npy").write_bytes(b"\x93NUMPY tampered")
    before = ds.manifest.read_bytes()
    with pytest.raises(ingest.IngestRefused, match="changed: test_x.npy"):
        ingest_train(work, batch2)
    assert ds.manifest.read_bytes() == before and not (ds.manifest.parent / "history" / "train" / "v2.json").exists()


def test_ingest_cli_refusal_is_one_line(work, tmp_path):
    b = tmp_path / "linked"
    b.mkdir()
    os.symlink("/etc/hostname", b / "train_x.npy")
    res = run_cli("data", "ingest", str(b), "--dataset", "train", "--source", "s3://x", "--config", str(work["policy"]))
    assert_one_line_refusal(res, 1, "train_x.npy (symlink)")
    res = run_cli("data", "ingest", str(b), "--dataset", "nope", "--source", "s3://x", "--config", str(work["policy"]))
    assert_one_line_refusal(res, 2, "no dataset 'nope'")


def test_data_log_lists_every_batch_with_source_and_digest(work, batch2):
    res = run_cli(
        "data",
        "ingest",
        str(batch2),
        "--dataset",
        "train",
        "--source",
        "s3://data/batch-2",
        "--note",
        "vendor relabel",
        "--config",
        str(work["policy"]),
    )
    assert res.returncode == 0, res.stderr
    assert "version 2" in res.stdout and "replaced: train_y.npy" in res.stdout
    m = manifest.load(work["pol"].data.train.manifest)
    v1 = manifest.load(work["pol"].data.train.manifest.parent / "history" / "train" / "v1.json")

    res = run_cli("data", "log", "train", "--config", str(work["policy"]))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"2 versions, current v2 {m['root_digest']}" in out
    assert f"v1  {v1['root_digest']}" in out and f"v2  {m['root_digest']}  5 files  parent {v1['root_digest']}" in out
    assert "source sklearn.datasets.load_digits" in out and "source s3://data/batch-2" in out
    assert f"digest {m['batches']['b0002']['root_digest']}" in out and "replaced train_y.npy" in out
    assert "note: vendor relabel" in out and out.count("ledger seq") == 2

    # The history rewritten (v1 replaced by another manifest): the broken parent link is named.
    hist_v1 = work["pol"].data.train.manifest.parent / "history" / "train" / "v1.json"
    other = tmp_path_manifest(work)
    hist_v1.write_text(json.dumps(other))
    res = run_cli("data", "log", "train", "--config", str(work["policy"]))
    assert_one_line_refusal(res, 1, "history/train/v2.json", "is not the root digest of version 1")


def tmp_path_manifest(work) -> dict:
    """A well-formed version 1 of 'train' over other data (the golden files)."""
    m = manifest.build(work["pol"].data.golden.dir, "train")
    return m | {"version": 1, "parent": None}


def test_data_log_flags_a_version_missing_from_the_ledger(work, batch2):
    ingest_train(work, batch2)
    lines = work["ledger"].read_text().splitlines()
    work["ledger"].write_text("\n".join(lines[:2]) + "\n")  # the v2 entry cut off the tail of the ledger
    res = run_cli("data", "log", "train", "--config", str(work["policy"]))
    assert "NOT IN LEDGER" in res.stdout
    assert_one_line_refusal(res, 1, "v2 of 'train' has no matching data.ingest entry")


def test_ingest_on_a_manifest_written_without_ingest_starts_the_history(work, batch2):
    """A fork's existing manifest (airlock data manifest) becomes version 1, with stats, and the chain continues."""
    ds = work["pol"].data.train
    shutil.rmtree(ds.manifest.parent / "history" / "train")
    manifest.write(ds.manifest, manifest.build(ds.dir, "train"))
    legacy = manifest.load(ds.manifest)
    r = ingest_train(work, batch2)
    assert r.version == 2 and r.parent == legacy["root_digest"]
    v1 = manifest.load(ds.manifest.parent / "history" / "train" / "v1.json")
    assert v1["version"] == 1 and v1["root_digest"] == legacy["root_digest"] and set(v1["stats"]) == {"train", "test"}
    versions = ingest.lineage("train", ds.manifest, Ledger(work["ledger"]))
    assert [(v.version, v.batch_id) for v in versions] == [(1, None), (2, "b0002")]


def test_trace_lists_every_file_of_a_registered_model_with_its_source(work, batch2, tmp_path):
    ingest_train(work, batch2)
    pol = work["pol"]
    # A signed model whose provenance was written the way sign_and_stage writes it.
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    prov = {
        "run_id": "0b7e9a52-0000-4000-8000-00000000000a",
        "commit": {"commit": "ab" * 20, "signer": demo.COMMITTER},
        "datasets": {
            n: ingest.provenance_entry(manifest.load(getattr(pol.data, n).manifest), f"manifests/{n}.json")
            for n in ("train", "golden")
        },
    }
    (model / "provenance.json").write_text(json.dumps(prov))
    sign_model(model, tmp_path / "model.sig", work["keys"] / "model_signing.key")
    reg = Registry.from_policy(pol, Ledger(pol.ledger.path))  # the demo's: its models are encrypted at rest
    staged = reg.stage(model, tmp_path / "model.sig", prov["run_id"])

    res = run_cli("data", "trace", "--stage", "staging", "--config", str(work["policy"]))
    assert res.returncode == 0, res.stderr
    assert f"staging model {staged.digest} (signature verified)" in res.stdout
    m = manifest.load(pol.data.train.manifest)
    rows = {tuple(line.split()[:4]): line for line in res.stdout.splitlines()[1:]}
    y = ("train", "train_y.npy", m["files"]["train_y.npy"]["sha256"], "b0002")
    x = ("train", "train_x.npy", m["files"]["train_x.npy"]["sha256"], "b0001")
    assert rows[y].endswith("s3://data/batch-2")
    assert rows[x].endswith("sklearn.datasets.load_digits (scikit-learn " + rows[x].split("scikit-learn ")[1])
    assert sum(1 for k in rows if k[0] in ("train", "golden")) == 5 + 2  # every file of both datasets

    as_json = json.loads(
        run_cli("data", "trace", "--stage", "staging", "--config", str(work["policy"]), "--json").stdout
    )
    assert {(f["dataset"], f["path"], f["batch"], f["source"].split()[0]) for f in as_json["files"]} >= {
        ("train", "train_y.npy", "b0002", "s3://data/batch-2"),
        ("golden", "golden_x.npy", "b0001", "sklearn.datasets.load_digits"),
    }

    # The registered model changed after signing: trace refuses instead of answering from it.
    stored = Path(pol.registry.path) / "staging" / staged.digest.removeprefix("sha256:")
    (stored / "model" / "provenance.json").write_text(json.dumps(prov | {"run_id": "forged"}))
    res = run_cli("data", "trace", "--stage", "staging", "--config", str(work["policy"]))
    assert res.returncode == 1 and res.stderr.startswith("airlock: ") and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["copy", "ledger"])
def test_a_full_disk_during_ingest_is_one_line_and_leaves_the_dataset_as_it_was(work, batch2, where):
    """RLIMIT_FSIZE cuts writes as a full file system does: while copying the batch, or at the very end, when the
    ledger entry cannot be written (everything already in place is then taken back)."""
    import resource
    import signal

    from airlock.errors import IngestRefused, LedgerError

    ds = work["pol"].data.train
    ledger = Ledger(work["ledger"])
    ledger.append("test.padding", {"pad": "x" * 60000})  # a ledger longer than any file this ingest writes
    watched = [p for p in [*ds.dir.rglob("*"), *ds.manifest.parent.rglob("*")] if p.is_file()]
    before = {p: p.read_bytes() for p in watched}
    entries = len(list(ledger.entries()))
    if where == "copy":
        (batch2 / "big.bin").write_bytes(os.urandom(1 << 20))
        limit = 1 << 19
    else:
        limit = work["ledger"].stat().st_size + 40
        assert all(p.stat().st_size < limit for p in batch2.rglob("*") if p.is_file())
        assert ds.manifest.stat().st_size * 2 < limit, "the new manifest must still fit under the limit"
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
        with pytest.raises((IngestRefused, LedgerError)) as e:
            ingest_train(work, batch2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    line = e.value.one_line()
    assert "File too large" in line and "\n" not in line
    if where == "copy":
        assert "nothing was ingested" in line
    else:  # the batch and the manifests were in place; the ledger refused; all of it was taken back
        assert isinstance(e.value, LedgerError) and "nothing was recorded" in line
    now = [p for p in [*ds.dir.rglob("*"), *ds.manifest.parent.rglob("*")] if p.is_file()]
    assert sorted(now) == sorted(watched) and all(p.read_bytes() == before[p] for p in watched)
    assert len(list(ledger.entries())) == entries
    assert ingest_train(work, batch2).version == 2  # with space again, the same batch goes in
