"""Precise exception types. Every Airlock error carries one line saying what is wrong and one saying what to do.

The CLI prints ``airlock: <what> — <hint>`` and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class AirlockError(Exception):
    """Base class: a refusal or a user error, reported in one line.

    Exit codes (stable, documented in the README): 1 = refused (a gate, a signature, an approval, a tampered
    registry or ledger); 2 = usage or configuration error (fix the command or airlock.toml). An exception that is
    not an AirlockError is a bug of Airlock's: the CLI reports it in one line and exits 3 (:data:`EXIT_INTERNAL`).
    """

    exit_code = 2

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = " ".join(str(what).split())
        self.hint = " ".join(str(hint).split())

    def one_line(self) -> str:
        return f"{self.what} — {self.hint}" if self.hint else self.what


class UsageError(AirlockError):
    """The command cannot go on as given (e.g. a confirmation that cannot be asked, or was not given)."""


class PolicyError(AirlockError):
    """airlock.toml is missing, unparseable, or a value is out of range."""


class TrustRootError(AirlockError):
    """A trust file (allowed signers, approvers, public key) is missing, malformed, or judged by itself."""


class DataError(AirlockError):
    """A dataset file cannot be read or has the wrong shape."""


class UntrustedInputError(AirlockError):
    """Untrusted JSON (a manifest, an approval, a registry record, a ledger line) that does not mean one thing."""

    exit_code = 1


class UnsafeNameError(AirlockError):
    """A file name that cannot be recorded unambiguously (a line break, a control character, a non-canonical path):
    it could make two different file sets share one digest."""

    exit_code = 1


class LedgerError(AirlockError):
    """The tamper-evident log is broken: an entry was edited, removed or reordered."""

    exit_code = 1


class RegistryError(AirlockError):
    """A registry object, signature or approval does not verify, or a write failed."""

    exit_code = 1


class ApprovalError(AirlockError):
    """An approval cannot be made or was refused."""

    exit_code = 1


class GateFailed(AirlockError):
    """A gate refused: the pipeline stops and nothing is promoted."""

    exit_code = 1


# -- by layer (each module raises its own, all here so that one file lists every way Airlock says no) -------------


class GitError(AirlockError):
    """git failed or is missing, or a commit cannot be exported safely (airlock/gitutil.py)."""


class SandboxError(AirlockError):
    """The sandbox could not start, or the code in it failed or broke a limit (airlock/sandbox.py)."""

    exit_code = 1


class TrainerEnvError(AirlockError):
    """The trainer's locked environment cannot be installed or has changed (airlock/trainer_env.py). ``code`` is the
    refusal code the environment gate reports (gates/environment.py)."""

    exit_code = 1

    def __init__(self, what: str, hint: str = "", code: str = "environment.refused") -> None:
        super().__init__(what, hint)
        self.code = code


class OracleError(AirlockError):
    """The sandboxed model failed, stalled, or answered something that is not an answer (airlock/oracle.py)."""

    exit_code = 1


class ModelDirError(AirlockError):
    """The signed model directory cannot be built from what the trainer wrote (airlock/modeldir.py)."""

    exit_code = 1


class SigningError(AirlockError):
    """A model cannot be signed or its signature does not verify (airlock/modelsign.py)."""


class BomError(AirlockError):
    """The AI bill of materials cannot be built or does not validate (airlock/aibom.py): a bug, not user input."""


class IngestRefused(DataError):
    """The batch or the dataset is not in a state a new version may be built on (airlock/ingest.py)."""

    exit_code = 1


class LineageError(DataError):
    """The recorded lineage of a dataset does not hold together (airlock/ingest.py)."""

    exit_code = 1


class ApprovalRefused(AirlockError):
    """One approval is refused; the reason says why, the code which rule (gates/approval.py, where it is also
    called Refused)."""

    exit_code = 1

    def __init__(self, what: str, hint: str = "", code: str = "approval.refused") -> None:
        super().__init__(what, hint)
        self.code = code


class AuditInputError(AirlockError):
    """Input that `airlock audit` cannot audit: one line saying what and what to do (audit/k8s/)."""


class DemoError(AirlockError):
    """`airlock demo` cannot run (flows/demo.py)."""

    exit_code = 1


class MirrorError(AirlockError):
    """The MLflow mirror cannot be written or read (registry/mlflow_mirror.py); it never decides anything."""

    exit_code = 1


class ServeError(AirlockError):
    """The serving side cannot start or cannot serve (serve/): a model that does not verify, a bad key file."""

    exit_code = 1
