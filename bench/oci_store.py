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
    # A bundle shaped like model_signing's (pull_object checks the manifest's layers against its file list before
    # it downloads them); not a valid signature: verification is not what this measures.
    import base64
    import hashlib

    resources = []
    for p in sorted((obj / "model").rglob("*")):
        if p.is_file():
            resources.append({"name": p.relative_to(obj / "model").as_posix(), "digest": _sha256(p, hashlib)})
    payload = base64.b64encode(json.dumps({"predicate": {"resources": resources}}).encode()).decode()
    (obj / "model.sig").write_text(json.dumps({"dsseEnvelope": {"payload": payload}, "pad": "x" * 3000}))
    (obj / "attestations").mkdir()
    for n in ("gate-commit.intoto.json", "slsa-provenance.intoto.json"):
        (obj / "attestations" / n).write_text(json.dumps({"statement": n}))
    (obj / "attestations.sig").write_text(json.dumps({"bundle": "y" * 3000}))
    return obj


def _sha256(p: Path, hashlib) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    from registry import atrest, oci
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
            kek = atrest.kek_from_policy(atrest.generate_key(d / "registry.key"))
            assert kek is not None
            sealer = atrest.Sealer(kek)
            keys = (
                "cp_r",
                "sha256sum",
                "push",
                "get",
                "pull",
                "promote",
                "push_sealed",
                "pull_sealed",
                "promote_sealed",
            )
            rows: dict[str, list[float]] = {k: [] for k in keys}
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
                # Encrypted at rest (registry/atrest.py): sealed on the way up, opened on the way down.
                srepo = f"bench/sealed{i}/staging"
                sm = ""

                def push_sealed(srepo=srepo, i=i):
                    nonlocal sm
                    sm = oci.push_object(client, srepo, obj, digest, sealer, scratch=d / f"scratch{i}")

                rows["push_sealed"].append(_timed(push_sealed))
                rows["pull_sealed"].append(
                    _timed(lambda srepo=srepo, sm=sm, i=i: oci.pull_object(client, srepo, sm, d / f"spull{i}", sealer))
                )
                rows["promote_sealed"].append(
                    _timed(
                        lambda srepo=srepo, sm=sm, i=i: oci.promote(client, srepo, f"bench/sealed{i}/production", sm)
                    )
                )
                assert (d / f"spull{i}" / "model" / "model.safetensors").read_bytes()[:4096] == (
                    obj / "model" / "model.safetensors"
                ).read_bytes()[:4096]
                for name in (f"cp{i}", f"pull{i}", f"spull{i}", f"scratch{i}"):
                    shutil.rmtree(d / name, ignore_errors=True)
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
        "encrypted": {
            "push_over_cp_r": round(med["push_sealed"] / med["cp_r"], 2),
            "pull_over_sha256sum_plus_transfer": round(med["pull_sealed"] / baseline, 2),
            "pull_sealed_over_pull": round(med["pull_sealed"] / med["pull"], 2),
            "promote_seconds": med["promote_sealed"],
        },
        "targets": {"promote_seconds": 0.2, "pull_over_sha256sum_plus_transfer": 1.5},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
