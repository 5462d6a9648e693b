"""Precise exception types. Every Airlock error carries one line saying what is wrong and one saying what to do.

The CLI prints ``airlock: <what> — <hint>`` and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class AirlockError(Exception):
    """Base class: a refusal or a user error, reported in one line.

    Exit codes (stable, documented in the README): 1 = refused (a gate, a signature, an approval, a tampered
    registry or ledger); 2 = usage or configuration error (fix the command or airlock.toml).
    """

    exit_code = 2

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = " ".join(str(what).split())
        self.hint = " ".join(str(hint).split())

    def one_line(self) -> str:
        return f"{self.what} — {self.hint}" if self.hint else self.what


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
