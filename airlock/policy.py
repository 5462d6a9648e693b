"""The policy file, ``airlock.toml``: thresholds, trust-file paths, quorum, timeouts, locations.

Validated at start with every bad value reported by its key and what is expected. Relative paths are resolved
against the directory of the policy file, except dataset manifests, which are committed in the training repository
and resolved against it.

Security rule: the policy and the trust files it names (allowed commit signers, approvers, model-signing public
key) must not live inside the repository under test. A commit cannot vouch for itself.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airlock.errors import PolicyError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepoPolicy(_Strict):
    path: Path = Field(description="the training repository (git work tree)")


class TrustPolicy(_Strict):
    allowed_signers: Path = Field(description="OpenSSH allowed_signers file of who may sign training commits")
    approvers: Path = Field(description="OpenSSH allowed_signers file of who may approve a promotion")
    model_signing_public_key: Path = Field(description="PEM public key that verifies model signatures")


class SigningPolicy(_Strict):
    private_key: Path | None = Field(
        default=None, description="PEM EC private key for model signing; else $AIRLOCK_SIGNING_KEY")


class DatasetPolicy(_Strict):
    dir: Path
    manifest: Path  # relative to the training repository: manifests are committed and signed with the code


class DataPolicy(_Strict):
    train: DatasetPolicy
    golden: DatasetPolicy


class TrainingPolicy(_Strict):
    command: list[str] = Field(default=["{python}", "-m", "training.train"], min_length=1)
    timeout_seconds: int = Field(default=1800, gt=0)
    threads: int = Field(default=1, ge=1, le=256)


class EvaluationPolicy(_Strict):
    min_test_accuracy: Fraction = 0.90
    min_golden_accuracy: Fraction = 0.90
    epsilon: float = Field(default=0.1, gt=0.0, le=1.0)
    min_robust_accuracy: Fraction = 0.30
    pgd_steps: int = Field(default=10, ge=1, le=1000)
    robust_samples: int = Field(default=360, ge=10)
    seed: int = 0


class ApprovalPolicy(_Strict):
    quorum: int = Field(default=2, ge=1, le=20)
    timeout_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    poll_seconds: float = Field(default=2.0, gt=0, le=60)
    forbid_self_approval: bool = True
    max_attempts: int = Field(default=20, ge=1)


class RegistryPolicy(_Strict):
    path: Path


class LedgerPolicy(_Strict):
    path: Path


class RunPolicy(_Strict):
    workdir: Path = Path(".airlock/runs")


class Policy(_Strict):
    repo: RepoPolicy
    trust: TrustPolicy
    signing: SigningPolicy = SigningPolicy()
    data: DataPolicy
    training: TrainingPolicy = TrainingPolicy()
    evaluation: EvaluationPolicy = EvaluationPolicy()
    approval: ApprovalPolicy = ApprovalPolicy()
    registry: RegistryPolicy
    ledger: LedgerPolicy
    run: RunPolicy = RunPolicy()

    # Set by load(): where the policy came from and its digest (recorded with every run).
    source: Path = Path("airlock.toml")
    digest: str = ""

    def trust_files(self) -> dict[str, Path]:
        return {
            "trust.allowed_signers": self.trust.allowed_signers,
            "trust.approvers": self.trust.approvers,
            "trust.model_signing_public_key": self.trust.model_signing_public_key,
        }


def _resolve(p: Path | None, base: Path) -> Path | None:
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p)


def _describe(err: dict) -> str:
    key = ".".join(str(x) for x in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against docs/policy.md)"
    elif err["type"] == "missing":
        msg = "missing (required)"
    got = err.get("input")
    got_s = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f", got {got!r}"
    return f"{key}: {msg}{got_s}"


def load(path: str | Path) -> Policy:
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror}",
                          "pass --config PATH to an airlock.toml (see docs/policy.md)") from None
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path} is not valid TOML: {e}", "fix the syntax at the position shown") from None
    try:
        pol = Policy.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise PolicyError(f"{path}: {_describe(first)}{more}", "fix that key in the policy file") from None

    base = path.resolve().parent
    repo = _resolve(pol.repo.path, base)
    updates = {
        "repo": RepoPolicy(path=repo),
        "trust": TrustPolicy(**{k: _resolve(v, base) for k, v in pol.trust.model_dump().items()}),
        "signing": SigningPolicy(private_key=_resolve(pol.signing.private_key, base)),
        "data": DataPolicy(**{
            name: DatasetPolicy(dir=_resolve(ds.dir, base), manifest=_resolve(ds.manifest, repo))
            for name, ds in (("train", pol.data.train), ("golden", pol.data.golden))
        }),
        "registry": RegistryPolicy(path=_resolve(pol.registry.path, base)),
        "ledger": LedgerPolicy(path=_resolve(pol.ledger.path, base)),
        "run": RunPolicy(workdir=_resolve(pol.run.workdir, base)),
        "source": path.resolve(),
        "digest": "sha256:" + hashlib.sha256(raw_bytes).hexdigest(),
    }
    return pol.model_copy(update=updates)
