"""The OCI model store (registry/oci.py) against Debian's docker-registry on loopback, with baselines measured in the
same run.

    python3 -m bench.oci_store [--size-mib 300] [--repeat 3] [--out bench/results/oci_store.json]

A registry-object-shaped directory (``model/model.safetensors`` of random bytes, four small files, a signature and
two attestations; page cache warm) is pushed to a fresh repository, pulled with every blob hashed as it arrives, and
promoted by digest to another repository (blobs mounted, manifest by digest, referrers, tag last). Baselines:
``cp -r`` of the directory and ``sha256sum`` over its files. Targets (issue 12): promotion <= 0.2 s; pull with
digest checks <= 1.5x (sha256sum + the transfer), the transfer measured as a plain streamed GET of the same blobs.
Medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _object(d: Path, size_mib: int) -> Path:
    obj = d / "object"
    (obj / "model" / "evidence").mkdir(parents=True)
    with open(obj / "model" / "model.safetensors", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    for name in ("training.json", "provenance.json", "aibom.cdx.json", "evidence/commit.json"):
        (obj / "model" / name).write_text(json.dumps({"name": name, "pad": "x" * 2000}))
    (obj / "model.sig").write_text(json.dumps({"bundle": "x" * 3000}))
    (obj / "attestations").mkdir()
    for n in ("gate-commit.intoto.json", "slsa-provenance.intoto.json"):
        (obj / "attestations" / n).write_text(json.dumps({"statement": n}))
    (obj / "attestations.sig").write_text(json.dumps({"bundle": "y" * 3000}))
    return obj


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    from registry import oci
    from tests.test_oci import _stop, start_registry

    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "oci_store.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-oci-") as tmp:
        d = Path(tmp)
        obj = _object(d, args.size_mib)
        files = [p for p in obj.rglob("*") if p.is_file()]
        (d / "srv").mkdir()
        proc, base = start_registry(d / "srv")
        try:
            client = oci.Client(base)
            rows: dict[str, list[float]] = {k: [] for k in ("cp_r", "sha256sum", "push", "get", "pull", "promote")}
            digest = "sha256:" + "0" * 64
            for i in range(args.repeat):
                copy = d / f"cp{i}"
                rows["cp_r"].append(
                    _timed(lambda copy=copy: subprocess.run(["cp", "-r", str(obj), str(copy)], check=True))
                )
                rows["sha256sum"].append(
                    _timed(lambda: subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True))
                )
                repo = f"bench/run{i}/staging"
                m = ""

                def push(repo=repo):
                    nonlocal m
                    m = oci.push_object(client, repo, obj, digest)

                rows["push"].append(_timed(push))
                body, _ = client.get_manifest(repo, m)
                layers = json.loads(body)["layers"]

                def get(repo=repo, layers=layers):
                    for desc in layers:  # the transfer alone: a streamed GET, nothing hashed or kept
                        with client._req("GET", f"/v2/{repo}/blobs/{desc['digest']}", stream=True) as r:
                            for _chunk in r.iter_content(1 << 20):
                                pass

                rows["get"].append(_timed(get))
                rows["pull"].append(
                    _timed(lambda repo=repo, m=m, i=i: oci.pull_object(client, repo, m, d / f"pull{i}"))
                )
                rows["promote"].append(
                    _timed(lambda repo=repo, m=m, i=i: oci.promote(client, repo, f"bench/run{i}/production", m))
                )
                shutil.rmtree(d / f"cp{i}")
                shutil.rmtree(d / f"pull{i}")
        finally:
            _stop(proc)
    med = {k: round(statistics.median(v), 3) for k, v in rows.items()}
    baseline = med["sha256sum"] + med["get"]
    result = {
        "command": f"python3 -m bench.oci_store --size-mib {args.size_mib} --repeat {args.repeat}",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "size_mib": args.size_mib,
        "median_seconds": med,
        "push_over_cp_r": round(med["push"] / med["cp_r"], 2),
        "pull_over_sha256sum_plus_transfer": round(med["pull"] / baseline, 2),
        "promote_seconds": med["promote"],
        "targets": {"promote_seconds": 0.2, "pull_over_sha256sum_plus_transfer": 1.5},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
