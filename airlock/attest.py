"""Signed evidence beside the signed weights: in-toto statements about one model digest.

For every model the flow writes, next to (not inside) the signed model directory:

* one statement per gate (``gate-<name>.intoto.json``): in-toto's test-result predicate (``PASSED`` / ``FAILED`` /
  ``WARNED``) with Airlock's gate name, refusal code, reason, metrics and the thresholds the policy set;
* a SLSA provenance v1 statement for the training run (``slsa-provenance.intoto.json``): builder, run id, the commit,
  the datasets by manifest root digest, the trainer command, the policy digest;
* a verification summary (``verification-summary.intoto.json``, SLSA VSA v1): pass or fail per gate, the policy
  digest.

Each statement's subject is the model (its sha256 root digest over every file). The statements are signed as one
directory by the model's own signer (``attestations.sig``: a model_signing bundle over each statement's sha256), so
every signing mode and signer policy applies to them unchanged.

Security rules (checked by :func:`verify`, at staging, promotion, ``airlock verify`` and ``airlock.load``):
* The set is signed by a signer the trust root allows, and holds exactly the statements named above.
* Every statement is about *this* model: a statement for another digest (evidence moved from another model) is
  refused.
* The statements agree with the signed provenance: every gate it records has a statement with the same verdict and
  code, and the summary's policy digest is the provenance's.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from airlock.errors import RegistryError
from airlock.modeldir import evidence_name

STATEMENT = "https://in-toto.io/Statement/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
VSA = "https://slsa.dev/verification_summary/v1"
BUILDER = "https://github.com/airlock-ml/airlock/flows/retrain.py"
DIR, SIG = "attestations", "attestations.sig"
_NAME = re.compile(r"^(gate-[a-z0-9][a-z0-9-]{0,62}|slsa-provenance|verification-summary)\.intoto\.json$")
_RESULT = {"pass": "PASSED", "fail": "FAILED", "advisory": "WARNED"}


def _statement(digest: str, predicate_type: str, predicate: dict) -> dict:
    return {
        "_type": STATEMENT,
        "subject": [{"name": "model", "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def build(digest: str, provenance: dict, thresholds: dict[str, dict]) -> dict[str, dict]:
    """The statements (file name -> statement) for the model ``digest`` from its provenance (signed in the model)."""
    policy = provenance.get("policy") or {}
    policy_ref = [{"name": str(policy.get("path", "airlock.toml")), "digest": {"sha256": _hex(policy.get("digest"))}}]
    out: dict[str, dict] = {}
    gates = provenance.get("gates") or []
    for g in gates:
        out[f"gate-{evidence_name(g['gate'])}.intoto.json"] = _statement(
            digest,
            TEST_RESULT,
            {
                "result": _RESULT.get(g.get("verdict"), "FAILED"),
                "configuration": policy_ref,
                "passedTests": [g["gate"]] if g.get("verdict") == "pass" else [],
                "warnedTests": [g["gate"]] if g.get("verdict") == "advisory" else [],
                "failedTests": [g["gate"]] if g.get("verdict") not in ("pass", "advisory") else [],
                "airlock": {
                    "gate": g["gate"],
                    "verdict": g.get("verdict"),
                    "code": g.get("code"),
                    "reason": g.get("reason"),
                    "metrics": g.get("metrics") or {},
                    "thresholds": thresholds.get(g["gate"], {}),
                },
            },
        )
    commit = provenance.get("commit") or {}
    datasets = provenance.get("datasets") or {}
    out["slsa-provenance.intoto.json"] = _statement(
        digest,
        SLSA_PROVENANCE,
        {
            "buildDefinition": {
                "buildType": "https://github.com/airlock-ml/airlock/retrain/v1",
                "externalParameters": {
                    "repository": commit.get("repo"),
                    "commit": commit.get("commit"),
                    "trainer": (provenance.get("trainer") or {}).get("command"),
                    "policy": policy_ref[0],
                },
                "internalParameters": {"sandbox": provenance.get("sandbox"), "signer": provenance.get("signer")},
                "resolvedDependencies": [
                    {"uri": f"git+{commit.get('repo')}", "digest": {"gitCommit": str(commit.get("commit"))}}
                ]
                + [
                    {"name": f"dataset-{n}", "digest": {"sha256": _hex((d or {}).get("root_digest"))}}
                    for n, d in sorted(datasets.items())
                ]
                + _environment_dependencies(provenance),
            },
            "runDetails": {
                "builder": {"id": BUILDER},
                "metadata": {"invocationId": provenance.get("run_id"), "startedOn": provenance.get("created_at")},
            },
        },
    )
    failed = [g["gate"] for g in gates if g.get("verdict") not in ("pass", "advisory")]
    out["verification-summary.intoto.json"] = _statement(
        digest,
        VSA,
        {
            "verifier": {"id": BUILDER},
            "timeVerified": provenance.get("created_at"),
            "resourceUri": "model",
            "policy": policy_ref[0],
            "verificationResult": "FAILED" if failed else "PASSED",
            "verifiedLevels": [],
            "airlock": {"gates": {g["gate"]: g.get("verdict") for g in gates}},
        },
    )
    return out


def write(out_dir: Path, statements: dict[str, dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=False)
    for name, st in sorted(statements.items()):
        (out_dir / name).write_text(json.dumps(st, indent=2, sort_keys=True) + "\n")
    return out_dir


def verify(
    att_dir: Path, signature: Path, trust_root: Path, digest: str, provenance: dict, stage: str | None = None
) -> dict[str, dict]:
    """The attestations of the model ``digest``, or RegistryError naming what is wrong (see the module's rules)."""
    from airlock import modelsign, untrusted

    if not att_dir.is_dir() or not signature.is_file():
        raise RegistryError("the model has no signed attestations", "re-run the pipeline: it writes them")
    modelsign.verify(att_dir, signature, trust_root, stage)  # the same signer policy as the model's
    names = sorted(os.listdir(att_dir))
    odd = [n for n in names if not _NAME.match(n) or not (att_dir / n).is_file() or (att_dir / n).is_symlink()]
    if odd:
        raise RegistryError(f"unexpected attestation entries: {', '.join(odd[:5])}", "the registry was altered")
    statements: dict[str, dict] = {}
    for n in names:
        st = untrusted.loads((att_dir / n).read_bytes(), f"attestation {n}", "the registry was altered")
        subject = st.get("subject") if isinstance(st, dict) else None
        want = [{"name": "model", "digest": {"sha256": digest.removeprefix("sha256:")}}]
        # Evidence moved from another model: a statement is only about the digest it names.
        if not isinstance(st, dict) or st.get("_type") != STATEMENT or subject != want:
            raise RegistryError(
                f"attestation {n} is not a statement about model {digest[:19]}…",
                "the evidence belongs to another model: do not use it",
            )
        statements[n] = st
    for g in provenance.get("gates") or []:
        st = statements.get(f"gate-{evidence_name(g['gate'])}.intoto.json")
        said = ((st or {}).get("predicate") or {}).get("airlock") or {}
        if (said.get("verdict"), said.get("code")) != (g.get("verdict"), g.get("code")):
            raise RegistryError(
                f"the attestation of gate {g['gate']} does not say what the provenance says "
                f"({said.get('verdict')}/{said.get('code')} vs {g.get('verdict')}/{g.get('code')})",
                "the evidence is not this model's: do not use it",
            )
    summary = statements.get("verification-summary.intoto.json", {}).get("predicate") or {}
    policy_digest = _hex((provenance.get("policy") or {}).get("digest"))
    if ((summary.get("policy") or {}).get("digest") or {}).get("sha256") != policy_digest:
        raise RegistryError(
            "the verification summary names another policy than the model's provenance", "the registry was altered"
        )
    if "slsa-provenance.intoto.json" not in statements:
        raise RegistryError("the model has no SLSA provenance statement", "re-run the pipeline")
    return statements


def _hex(d: Any) -> str:
    s = str(d or "")
    return s.split(":", 1)[1] if ":" in s else s


def _environment_dependencies(provenance: dict) -> list[dict]:
    """The trainer's lock file and every package it pinned (gates/environment.py), as SLSA resolved dependencies."""
    env = (provenance.get("trainer") or {}).get("environment") or {}
    if not isinstance(env, dict) or not env.get("lock"):
        return []
    deps = [{"name": f"lock:{env['lock']}", "digest": {"sha256": _hex(env.get("lock_digest"))}}]
    for p in env.get("packages") or []:
        if isinstance(p, dict):
            deps.append(
                {
                    "uri": f"pkg:pypi/{p.get('name')}@{p.get('version')}",
                    "digest": {"sha256": str(p.get("sha256") or "")},
                }
            )
    return deps
