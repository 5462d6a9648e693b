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
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airlock.errors import PolicyError

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepoPolicy(_Strict):
    path: Path = Field(description="the training repository (git work tree)")
    base_commit: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{7,64}$",
        description="history start when nothing is in production yet (default: the repository's whole history)",
    )


class TrustPolicy(_Strict):
    ref: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="read the trust files from this protected git ref of the training repository (e.g. origin/main); "
        "else they are paths outside the repository",
    )
    allowed_signers: Path = Field(description="OpenSSH allowed_signers file of who may sign training commits")
    approvers: Path = Field(description="OpenSSH allowed_signers file of who may approve a promotion")
    model_signing_public_key: Path = Field(description="PEM public key that verifies model signatures")
    revoked_keys: Path | None = Field(default=None, description="OpenSSH revocation file (KRL or public keys)")
    gpg_home: Path | None = Field(default=None, description="dedicated GnuPG home holding the trusted public keys")
    gpg_fingerprints: list[Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{40}$")]] = Field(
        default_factory=list, description="allow-list of primary-key fingerprints of GPG commit signers"
    )
    policy: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        description="read the deciding sections (thresholds, quorum, sandbox, trainer) from this file inside trust.ref",
    )


class SigningPolicy(_Strict):
    # "key": an EC private key file; "pkcs11": a key inside an HSM / KMS token that no process can read out.
    # "certificate": an EC key file with a certificate from the company CA (verifiers trust the CA and a subject).
    # "keyless": Sigstore; the workload's OIDC identity buys a short-lived certificate (verifiers trust the identity).
    mode: Literal["key", "pkcs11", "certificate", "keyless"] = "key"
    private_key: Path | None = Field(
        default=None, description="PEM EC private key for model signing; else $AIRLOCK_SIGNING_KEY"
    )
    pkcs11_uri: str | None = Field(
        default=None,
        pattern=r"^pkcs11:[^\s]*$",
        description="RFC 7512 URI of the token's key, e.g. pkcs11:token=airlock;object=model?module-path=/usr/lib/...",
    )
    pin_env: str = Field(default="AIRLOCK_PKCS11_PIN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    certificate: Path | None = Field(default=None, description="certificate mode: the signing certificate (PEM)")
    certificate_chain: list[Path] = Field(
        default_factory=list, description="certificate mode: the issuing CA's certificates (PEM)"
    )
    identity_token: Path | None = Field(
        default=None,
        description="keyless mode: a file holding the OIDC token (a projected Kubernetes service-account token with "
        "audience 'sigstore'); unset: the CI's ambient credential (GitHub Actions with id-token: write)",
    )
    sigstore_trust_config: Path | None = Field(
        default=None, description="keyless mode: a private Sigstore's trust configuration (JSON); unset: public good"
    )

    @model_validator(mode="after")
    def _mode(self) -> SigningPolicy:
        if self.mode == "pkcs11":
            if not self.pkcs11_uri:
                raise ValueError("signing.mode = pkcs11 needs signing.pkcs11_uri")
            if "pin-value" in self.pkcs11_uri or "pin-source" in self.pkcs11_uri:
                raise ValueError("signing.pkcs11_uri must not hold the PIN: set it in the environment (pin_env)")
        if self.mode == "certificate" and not (self.private_key and self.certificate and self.certificate_chain):
            raise ValueError(
                "signing.mode = certificate needs signing.private_key, signing.certificate and "
                "signing.certificate_chain (the issuing CA's certificates, PEM)"
            )
        return self


class ValidationPolicy(_Strict):
    """Content checks of a dataset by the data gate (gates/data_validation.py). Each is off unless declared."""

    splits: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] | None = Field(
        default=None, min_length=1, description="splits to check (default: every <split>_x.npy/<split>_y.npy pair)"
    )
    x_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, min_length=1, description="shape of one sample, e.g. [1, 8, 8] for x of shape (N, 1, 8, 8)"
    )
    x_dtype: str | None = Field(default=None, description="numpy dtype of x, e.g. float32")
    x_min: float | None = Field(default=None, allow_inf_nan=False, description="smallest allowed x value")
    x_max: float | None = Field(default=None, allow_inf_nan=False, description="largest allowed x value")
    labels: list[int] | None = Field(default=None, min_length=1, description="the allowed label set")
    max_label_shift: Fraction | None = Field(
        default=None,
        description="largest total-variation distance between a split's label distribution and the "
        "previous manifest version's",
    )

    @field_validator("x_dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        if v is not None:
            import numpy as np

            try:
                v = np.dtype(v).name
            except TypeError:
                raise ValueError(f"not a numpy dtype name: {v!r}") from None
        return v

    @model_validator(mode="after")
    def _range(self) -> ValidationPolicy:
        if self.x_min is not None and self.x_max is not None and self.x_min > self.x_max:
            raise ValueError(f"x_min {self.x_min} is above x_max {self.x_max}")
        return self


class DatasetPolicy(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    dir: Path
    manifest: Path  # relative to the training repository: manifests are committed and signed with the code
    # Golden set swapped together with its manifest in a signed commit: the policy (a trust root, outside the
    # repository) pins the root digest the dataset's manifest must have.
    pinned_root_digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    validation: ValidationPolicy = Field(default=ValidationPolicy(), alias="validate")


class DataPolicy(_Strict):
    train: DatasetPolicy
    golden: DatasetPolicy


class TrainingPolicy(_Strict):
    command: list[str] = Field(default=["{python}", "-m", "training.train"], min_length=1)
    timeout_seconds: int = Field(default=1800, gt=0)
    threads: int = Field(default=1, ge=1, le=256)
    fork: bool = Field(
        default=True,
        description="the golden stand-in's trainings run as forks of one sandboxed process that imported the "
        "trainer's dependencies once (airlock/forking.py); only for a command {python} -m MODULE. false: a new "
        "process for each, for a trainer whose imports are not safe to fork",
    )
    lock: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description="the trainer's lock file with hashes, a path in the training repository (airlock/trainer_env.py); "
        "unset: team code runs in Airlock's own environment (recorded as unpinned)",
    )
    environments: Path | None = Field(
        default=None,
        description="where locked trainer environments are kept; default $XDG_CACHE_HOME/airlock/trainer-envs "
        "(~/.cache/airlock/trainer-envs)",
    )

    @field_validator("lock")
    @classmethod
    def _inside_repo(cls, v: str | None) -> str | None:
        if v is not None and any(part in (".", "..") for part in v.split("/")):
            raise ValueError("training.lock must be a path inside the training repository, without . or ..")
        return v

    def environment_cache(self) -> Path:
        from airlock.trainer_env import default_cache

        return self.environments or default_cache()


class SandboxPolicy(_Strict):
    """Where team code runs (airlock/sandbox.py). "environment" only where the host itself is the sandbox."""

    mode: str = Field(
        default="bubblewrap",
        pattern=r"^(bubblewrap|environment)$",
        description='"bubblewrap" (namespaces; the default) or "environment" (the pod is the sandbox)',
    )
    bubblewrap: str = Field(default="bwrap", min_length=1, description="the bubblewrap executable")
    memory_mb: int = Field(default=8192, ge=64, le=1 << 20, description="memory cap per process of team code")
    output_mb: int = Field(default=2048, ge=1, le=1 << 22, description="cap on what team code may write")


class EvaluationPolicy(_Strict):
    min_test_accuracy: Fraction = 0.90
    min_golden_accuracy: Fraction = 0.90
    seed: int = 0


# The model-gate sections mirror the parameter dataclasses of gates/robustness.py, gates/backdoor.py,
# gates/golden_regression.py and gates/advisory.py (defaults are the calibrated values in BENCHMARKS.md; a test keeps
# them equal). They are spelled out here so that a bad value is refused at start, by its key.
Epsilon = Annotated[float, Field(gt=0.0, le=1.0)]


class RobustnessPolicy(_Strict):
    epsilons: list[Epsilon] = Field(default=[0.025, 0.05, 0.1, 0.15, 0.2, 0.3], min_length=1)
    gating_epsilon: Epsilon = 0.05
    min_robust_accuracy: Fraction = 0.70
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    samples: int = Field(default=360, ge=10)
    pgd_steps: int = Field(default=10, ge=1, le=1000)
    apgd_steps: int = Field(default=20, ge=1, le=1000)
    apgd_restarts: int = Field(default=1, ge=1, le=20)
    regression_alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    regression_margin: Fraction = 0.03
    max_gradient_error: Fraction = 0.10


class BackdoorPolicy(_Strict):
    ratio: float = Field(default=0.75, gt=0.0, le=1.0)
    ratio_no_production: float = Field(default=0.70, gt=0.0, le=1.0)
    stand_in_models: int = Field(default=5, ge=1, le=50)
    images: int = Field(default=200, ge=10)
    steps: int = Field(default=150, ge=1, le=10000)


class GoldenRegressionPolicy(_Strict):
    alpha: float = Field(default=0.01, gt=0.0, lt=1.0)
    method: str = Field(default="midp", pattern=r"^(midp|exact)$")
    margin: Fraction = 0.0


class AdvisoryPolicy(_Strict):
    enabled: bool = True
    mia_samples: int = Field(default=360, ge=10)
    extraction_budgets: list[Annotated[int, Field(ge=1)]] = Field(
        default=[25, 50, 100, 150, 200, 300, 400, 600, 800], min_length=1
    )
    extraction_agreement: Fraction = 0.90
    spectral_top: int = Field(default=20, ge=1)


class ApprovalPolicy(_Strict):
    # Roles, by different people (airlock/approvals.py): {role = "x", count = n}, {all_of = [...]}, {any_of = [...]}.
    # Unset: one ml-lead and one security approver.
    require: dict[str, Any] | None = None
    quorum: int = Field(default=2, ge=1, le=20)  # distinct approvers in all, whatever their roles
    ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)  # an approval expires this long after it was issued
    clock_skew_seconds: int = Field(default=300, ge=0, le=3600)
    timeout_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    poll_seconds: float = Field(default=2.0, gt=0, le=60)
    forbid_self_approval: bool = True
    max_attempts: int = Field(default=20, ge=1)
    # "pause": the run's process waits for the approvals (any `airlock run`, the embedded server).
    # "suspend": the process exits at each approval pause and a worker starts the run again when an approval arrives
    # (a deployment on a work pool: nothing idles for days); what was built is taken from the registry, verified.
    mode: Literal["pause", "suspend"] = "pause"

    @field_validator("require")
    @classmethod
    def _requirement(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from airlock.approvals import requirement

            requirement(v)  # ValueError with what is wrong: pydantic names the field
        return v


class RegistryPolicy(_Strict):
    path: Path = Field(description="the registry directory; with url: this machine's working directory for it")
    url: str | None = Field(
        default=None,
        pattern=r"^oci(\+https?)?://[^\s/]+/[a-z0-9]+([._/-][a-z0-9]+)*$",
        description="an OCI registry as the store: oci://HOST[:PORT]/PREFIX (oci+http:// for plain HTTP on loopback)",
    )
    ca: Path | None = Field(default=None, description="the CA (PEM) the OCI registry's certificate is checked against")
    username_env: str = Field(default="AIRLOCK_OCI_USERNAME", pattern=r"^[A-Z_][A-Z0-9_]*$")
    password_env: str = Field(default="AIRLOCK_OCI_PASSWORD", pattern=r"^[A-Z_][A-Z0-9_]*$")
    encryption_key: str | None = Field(
        default=None,
        pattern=r"^(env:[A-Z_][A-Z0-9_]*|pkcs11:[^\s]+|[^\s:][^\n]*)$",
        description="encrypt the stored model files (AES-256-GCM, registry/atrest.py) with this key: a key file "
        "(airlock registry keygen), env:VARIABLE, or a pkcs11: URI of an AES key in a token; unset: stored plain",
    )
    encryption_pin_env: str = Field(
        default="AIRLOCK_PKCS11_PIN", pattern=r"^[A-Z_][A-Z0-9_]*$", description="the token's PIN, for a pkcs11 key"
    )


class LedgerPolicy(_Strict):
    path: Path
    public_key: Path | None = Field(
        default=None,
        description="Ed25519 public key (PEM) every ledger entry must be signed by (airlock/ledger.py); unset: the "
        "ledger is hash-chained only",
    )
    key: Path | None = Field(
        default=None,
        description="the ledger's Ed25519 private key, for the processes that append; else $AIRLOCK_LEDGER_KEY",
    )
    checkpoints: Path | None = Field(
        default=None,
        description="a git repository whose refs/airlock/ledger-checkpoints receives a signed checkpoint of the "
        "ledger's head after every run (airlock/checkpoints.py); push that ref somewhere protected",
    )


class MlflowPolicy(_Strict):
    """An optional mirror into MLflow (registry/mlflow_mirror.py): a view of the registry, never an authority."""

    tracking_uri: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="the MLflow tracking server")
    experiment: str = Field(default="airlock", min_length=1, max_length=200)
    model_name: str = Field(default="airlock-model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
    token_env: str = Field(
        default="MLFLOW_TRACKING_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="a bearer token, if the server wants one",
    )


class ServePolicy(_Strict):
    """The inference app and its guard (serve/): who may ask, how much, and when a client is an attacker."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    api_keys: Path = Field(
        description="the API keys file (serve/keys.py): sha256 of each key, its client, entitlements"
    )
    store: str = Field(
        default="memory",
        pattern=r"^(memory|redis://[^\s/]+(/\d+)?)$",
        description="where the guard keeps counters, budgets and the response ladder: memory (one worker only) or "
        "redis://HOST:PORT[/DB] (every worker sees one stream)",
    )
    rate_per_second: float = Field(default=20.0, gt=0, le=100000)
    burst: int = Field(default=40, ge=1, le=1000000)
    budget: int | None = Field(
        default=None,
        ge=1,
        description="lifetime queries per client; unset: budget_fraction × the model's signed "
        "extraction effort (queries a copycat needs for 90% agreement)",
    )
    budget_fraction: float = Field(default=1.0, gt=0, le=1000)
    max_batch: int = Field(default=32, ge=1, le=4096)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    block_prefix_v4: int = Field(default=24, ge=8, le=32)
    block_prefix_v6: int = Field(default=64, ge=16, le=128)
    alerts: Path | None = Field(
        default=None, description="a file for the Falco-format alerts (JSON lines); unset: stderr"
    )
    prada_threshold: float = Field(default=0.945, gt=0, lt=1)
    prada_warmup: int = Field(default=100, ge=10)
    similar_window: int = Field(default=50, ge=10)
    rate_window: int = Field(default=100, ge=20)
    ood_rate: float = Field(default=0.10, gt=0, lt=1)
    range_rate: float = Field(default=0.10, gt=0, lt=1)
    low_margin: float = Field(default=0.2, gt=0, lt=1)
    low_margin_rate: float = Field(default=0.30, gt=0, lt=1)
    retrain_deployment: str | None = Field(
        default=None,
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="FLOW/DEPLOYMENT to run on a drift event (at most once an hour), e.g. airlock-retrain/retrain-process",
    )


class WatchPolicy(_Strict):
    """`airlock watch` (serve/watch.py): production re-verified and re-evaluated on a schedule."""

    max_golden_drop: float = Field(
        default=0.02, ge=0, le=1, description="alert when golden accuracy falls this far below the signed one"
    )


class RunPolicy(_Strict):
    workdir: Path = Path(".airlock/runs")


class Policy(_Strict):
    repo: RepoPolicy
    trust: TrustPolicy
    signing: SigningPolicy = SigningPolicy()
    data: DataPolicy
    training: TrainingPolicy = TrainingPolicy()
    sandbox: SandboxPolicy = SandboxPolicy()
    evaluation: EvaluationPolicy = EvaluationPolicy()
    robustness: RobustnessPolicy = RobustnessPolicy()
    backdoor: BackdoorPolicy = BackdoorPolicy()
    golden_regression: GoldenRegressionPolicy = GoldenRegressionPolicy()
    advisory: AdvisoryPolicy = AdvisoryPolicy()
    approval: ApprovalPolicy = ApprovalPolicy()
    registry: RegistryPolicy
    ledger: LedgerPolicy
    run: RunPolicy = RunPolicy()
    mlflow: MlflowPolicy | None = None
    serve: ServePolicy | None = None
    watch: WatchPolicy = WatchPolicy()

    # Set by load(): where the policy came from and its digest (recorded with every run); with trust.policy, the
    # protected copy it was read from ("<ref>@<commit>:<path>") and the digest covers both files.
    source: Path = Path("airlock.toml")
    digest: str = ""
    protected: str | None = None


@overload
def _resolve(p: Path, base: Path) -> Path: ...
@overload
def _resolve(p: None, base: Path) -> None: ...
@overload
def _resolve(p: Path | None, base: Path) -> Path | None: ...
def _resolve(p: Path | None, base: Path) -> Path | None:
    if p is None:
        return None
    try:
        p = Path(p).expanduser()
    except RuntimeError:  # "~name/..." for a user this machine does not have
        raise PolicyError(
            f"the path {str(p)[:80]!r} in the policy names a home directory that does not exist here",
            "write the path out, or start it with ~/ for the current user",
        ) from None
    return p if p.is_absolute() else (base / p)


def _describe(err: Mapping[str, Any]) -> str:
    key = ".".join(str(x) for x in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against docs/policy.md)"
    elif err["type"] == "missing":
        msg = "missing (required)"
    got = err.get("input")
    got_s = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f", got {got!r}"
    return f"{key}: {msg}{got_s}"


_TRUST_FILES = ("allowed_signers", "approvers", "model_signing_public_key", "revoked_keys")


def _resolve_key(spec: str | None, base: Path) -> str | None:
    """A key named by a file is resolved like every policy path; env: and pkcs11: are kept as written."""
    if spec is None or spec.startswith(("env:", "pkcs11:")):
        return spec
    return str(_resolve(Path(spec), base))


def _resolve_trust(t: TrustPolicy, base: Path) -> TrustPolicy:
    """On a protected ref, trust files are paths inside that ref (kept as written); else paths on disk."""
    values = t.model_dump()
    for key in _TRUST_FILES:
        if values[key] is not None:
            values[key] = Path(values[key]) if t.ref else _resolve(values[key], base)
    values["gpg_home"] = _resolve(t.gpg_home, base)
    values["gpg_fingerprints"] = [f.upper() for f in t.gpg_fingerprints]
    return TrustPolicy(**values)


# The sections that decide whether a model passes. With trust.policy they come from the protected ref only.
DECIDING = ("training", "sandbox", "evaluation", "robustness", "backdoor", "golden_regression", "advisory", "approval")


def _toml(data: bytes, what: str, hint: str) -> dict:
    """A policy file is read like any input: every parser failure is a one-line PolicyError."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(f"{what} is not valid UTF-8", hint) from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{what} is not valid TOML: {e}", hint) from None
    except ValueError:  # an integer beyond Python's digit limit
        raise PolicyError(f"{what} is not valid TOML: a number is too large", hint) from None
    except RecursionError:
        raise PolicyError(f"{what} is not valid TOML: nested too deeply", hint) from None


def _validate(raw: dict, where: str) -> Policy:
    try:
        return Policy.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise PolicyError(f"{where}: {_describe(first)}{more}", "fix that key in the policy file") from None


def _protected(pol: Policy, raw: dict, path: Path) -> tuple[dict, bytes, str]:
    """The deciding sections from trust.policy inside trust.ref: a change to thresholds or the quorum then takes a
    reviewed merge to the protected branch, like a change to the trust roots."""
    from airlock.gitutil import GitError, git

    t = pol.trust
    if not t.ref:
        raise PolicyError(f"{path}: trust.policy needs trust.ref", "name the protected ref the policy is read from")
    local = [k for k in DECIDING if k in raw]
    if local:
        raise PolicyError(
            f"{path}: [{local[0]}] is decided by the protected policy {t.ref}:{t.policy}",
            f"remove it from {path.name}; change it through a reviewed merge to the protected branch",
        )
    repo = _resolve(pol.repo.path, path.resolve().parent)
    try:
        sha = git(repo, "rev-parse", "--verify", "--end-of-options", f"{t.ref}^{{commit}}").stdout.strip()
        blob = git(repo, "show", f"{sha}:{t.policy}", binary=True).stdout
    except GitError:
        raise PolicyError(
            f"{path}: trust.policy {t.policy} is not in {t.ref}",
            "commit it to the protected branch (and fetch it), or fix trust.policy",
        ) from None
    where = f"{t.ref}@{sha}:{t.policy}"
    sections = _toml(blob, f"the protected policy {where}", "fix it on the protected branch")
    other = sorted(set(sections) - set(DECIDING))
    if other:
        raise PolicyError(
            f"the protected policy {where} holds [{other[0]}], which belongs in the local airlock.toml",
            f"keep only {', '.join(DECIDING)} there",
        )
    return sections, blob, where


def _digest(local: bytes, protected: bytes | None) -> str:
    h = hashlib.sha256(local)
    if protected is not None:
        h.update(b"\0airlock-protected-policy\0" + protected)
    return "sha256:" + h.hexdigest()


def load(path: str | Path) -> Policy:
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as e:
        raise PolicyError(
            f"cannot read policy {path}: {e.strerror}", "pass --config PATH to an airlock.toml (see docs/policy.md)"
        ) from None
    raw = _toml(raw_bytes, str(path), "fix the syntax at the position shown")
    pol = _validate(raw, str(path))
    protected_bytes, protected_at = None, None
    if pol.trust.policy is not None:
        sections, protected_bytes, protected_at = _protected(pol, raw, path)
        pol = _validate({**raw, **sections}, protected_at)

    base = path.resolve().parent
    repo = _resolve(pol.repo.path, base)
    updates = {
        "repo": RepoPolicy(path=repo),
        "trust": _resolve_trust(pol.trust, base),
        "signing": pol.signing.model_copy(
            update={
                "private_key": _resolve(pol.signing.private_key, base),
                "certificate": _resolve(pol.signing.certificate, base),
                "certificate_chain": [_resolve(c, base) for c in pol.signing.certificate_chain],
                "identity_token": _resolve(pol.signing.identity_token, base),
                "sigstore_trust_config": _resolve(pol.signing.sigstore_trust_config, base),
            }
        ),
        "data": DataPolicy(
            **{
                name: ds.model_copy(update={"dir": _resolve(ds.dir, base), "manifest": _resolve(ds.manifest, repo)})
                for name, ds in (("train", pol.data.train), ("golden", pol.data.golden))
            }
        ),
        "training": pol.training.model_copy(update={"environments": _resolve(pol.training.environments, base)}),
        "registry": pol.registry.model_copy(
            update={
                "path": _resolve(pol.registry.path, base),
                "ca": _resolve(pol.registry.ca, base),
                "encryption_key": _resolve_key(pol.registry.encryption_key, base),
            }
        ),
        "ledger": LedgerPolicy(
            path=_resolve(pol.ledger.path, base),
            public_key=_resolve(pol.ledger.public_key, base),
            key=_resolve(pol.ledger.key, base),
            checkpoints=_resolve(pol.ledger.checkpoints, base),
        ),
        "run": RunPolicy(workdir=_resolve(pol.run.workdir, base)),
        "serve": pol.serve
        and pol.serve.model_copy(
            update={"api_keys": _resolve(pol.serve.api_keys, base), "alerts": _resolve(pol.serve.alerts, base)}
        ),
        "source": path.resolve(),
        "digest": _digest(raw_bytes, protected_bytes),
        "protected": protected_at,
    }
    return pol.model_copy(update=updates)
