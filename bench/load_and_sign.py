"""Verified loading and model signing, against unverified baselines measured in the same run.

    python3 -m bench.load_and_sign [--size-mib 1024] [--repeat 5] [--out bench/results/load_and_sign.json]

1. `airlock.load` of the example model (the demo trainer on the digits, signed, staged and promoted with an ml-lead
   and a security approval, in a temporary registry): the first call in a fresh process (imports included, apart)
   and the median of warm calls in that process, against `safetensors.torch.load` of the same weights file
   (unverified). Target (issue 11): <= 50 ms after the process has started (the warm figure).
2. Signing and verifying a model directory of `--size-mib` (8 files of random bytes, page cache warm) with Airlock's
   signer (`airlock.modelsign`, model_signing's EC key mode) and the registry's own digest over every file, against
   one `openssl dgst -sha256` over the same files. Target: each <= 1.2x openssl.
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

from bench._machine import processor  # noqa: E402

_FIRST_LOAD = """
import sys, time, json
t0 = time.perf_counter()
import airlock
m = airlock.load("production", config=sys.argv[1])
t1 = time.perf_counter()
m.tensors()
warm = []
for _ in range(int(sys.argv[2])):
    a = time.perf_counter(); airlock.load("production", config=sys.argv[1]).tensors(); warm.append(time.perf_counter() - a)
from safetensors.torch import load
raw = open(sys.argv[3], "rb").read()
base = []
for _ in range(int(sys.argv[2])):
    a = time.perf_counter(); load(open(sys.argv[3], "rb").read()); base.append(time.perf_counter() - a)
print(json.dumps({"first": t1 - t0, "warm": warm, "baseline": base}))
"""


def _promoted(work: Path) -> tuple[Path, Path]:
    """A trained, signed, staged and promoted example model in a new registry; returns (policy, weights file)."""
    from airlock import aibom, approvals, modelsign
    from airlock.datasets import write_digits
    from airlock.ledger import Ledger
    from registry import Registry

    write_digits(work / "train", work / "golden")
    out = work / "out"
    subprocess.run(
        [sys.executable, "-m", "training.train", "--data", str(work / "train"), "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    keys = work / "keys"
    keys.mkdir()
    lines = []
    for who, role in (("alice", "ml-lead"), ("bob", "security")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / who)], check=True)
        pub = " ".join((keys / f"{who}.pub").read_text().split()[:2])
        lines.append(f'{who}@example.com namespaces="airlock-approval" {pub} roles={role}\n')
    (keys / "approvers").write_text("".join(lines))
    (keys / "allowed_signers").write_text("")
    modelsign.generate_keypair(keys / "model.key", keys / "model.pub")
    run = "0b7e9a52-0000-4000-8000-00000000bench"
    prov = {
        "run_id": run,
        "commit": {"signer": "dev@example.com"},
        "gates": [{"gate": "artifact", "verdict": "pass", "code": "artifact.pass", "reason": "", "metrics": {}}],
        "datasets": {},
    }
    (out / "provenance.json").write_text(json.dumps(prov))
    aibom.write(out, prov, {}, {})
    modelsign.sign(out, work / "model.sig", keys / "model.key")
    from airlock import attest
    from airlock.hashing import hash_tree

    att = attest.write(work / attest.DIR, attest.build(hash_tree(out).root_digest, prov, {}))
    modelsign.sign(att, work / attest.SIG, keys / "model.key")
    reg = Registry(work / "registry", Ledger(work / "ledger.jsonl"), keys / "model.pub", keys / "approvers")
    staged = reg.stage(out, work / "model.sig", run)
    signed = [
        approvals.sign(keys / w, approvals.make_statement(run, staged.digest, f"{w}@example.com", "approve"))
        for w in ("alice", "bob")
    ]
    reg.promote(staged.digest, signed)
    policy = work / "airlock.toml"
    policy.write_text(
        f'[repo]\npath = "{work}"\n[trust]\nallowed_signers = "{keys / "allowed_signers"}"\n'
        f'approvers = "{keys / "approvers"}"\nmodel_signing_public_key = "{keys / "model.pub"}"\n'
        '[data.train]\ndir = "x"\nmanifest = "x.json"\n[data.golden]\ndir = "y"\nmanifest = "y.json"\n'
        f'[registry]\npath = "{work / "registry"}"\n[ledger]\npath = "{work / "ledger.jsonl"}"\n'
    )
    return policy, out / "model.safetensors"


def _time(fn, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load_and_sign.json")
    args = ap.parse_args()

    from airlock import modelsign
    from airlock.hashing import hash_tree

    work = Path(tempfile.mkdtemp(prefix="airlock-bench-load-"))
    try:
        policy, weights = _promoted(work)
        res = subprocess.run(
            [sys.executable, "-c", _FIRST_LOAD, str(policy), "20", str(weights)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        load = json.loads(res.stdout)

        big = work / "big"
        big.mkdir()
        per = args.size_mib // 8
        for i in range(8):
            with open(big / f"shard-{i}.bin", "wb") as f:
                for _ in range(per):
                    f.write(os.urandom(1 << 20))
        files = sorted(str(p) for p in big.iterdir())
        openssl = lambda: subprocess.run(["openssl", "dgst", "-sha256", *files], check=True, capture_output=True)  # noqa: E731
        openssl()  # page cache warm
        sig = work / "big.sig"
        sign = lambda: modelsign.sign(big, sig, work / "keys" / "model.key")  # noqa: E731
        sign()
        verify = lambda: (modelsign.verify(big, sig, work / "keys" / "model.pub"), hash_tree(big))  # noqa: E731
        t_openssl, t_sign, t_verify = (_time(f, args.repeat) for f in (openssl, sign, verify))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    warm = statistics.median(load["warm"])
    base = statistics.median(load["baseline"])
    result = {
        "command": "python3 -m bench.load_and_sign",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": processor()},
        "load": {
            "first_call_seconds_with_imports": round(load["first"], 4),
            "warm_median_seconds": round(warm, 4),
            "unverified_safetensors_load_seconds": round(base, 5),
            "warm_ratio_to_unverified": round(warm / base, 1),
        },
        "sign_verify": {
            "size_mib": per * 8,
            "openssl_seconds": round(t_openssl, 3),
            "sign_seconds": round(t_sign, 3),
            "verify_seconds": round(t_verify, 3),
            "sign_ratio_to_openssl": round(t_sign / t_openssl, 2),
            "verify_ratio_to_openssl": round(t_verify / t_openssl, 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
