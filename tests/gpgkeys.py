"""Real GnuPG keys for the commit-gate tests: a signer's keyring and a dedicated verifying keyring."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def gpg(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", *args], input=input, capture_output=True, check=True
    )


def fingerprint(home: Path, uid: str) -> str:
    out = gpg(home, "--with-colons", "--list-keys", uid).stdout.decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


@dataclass
class GpgKeys:
    signer_home: Path  # where the committers' private keys live
    verify_home: Path  # the dedicated keyring the policy names (trust.gpg_home)
    faketime_gpg: Path  # a gpg wrapper signing as of 2020 (for a key that has expired since)
    fpr: dict[str, str]

    def close(self) -> None:
        for home in (self.signer_home, self.verify_home):
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def make(root: Path) -> GpgKeys:
    signer, verify = root / "signer", root / "verify"
    for d in (signer, verify):
        d.mkdir(mode=0o700, parents=True)
    names = {
        "good": "Good Dev <good@example.com>",
        "untrusted": "Stranger <stranger@example.com>",
        "revoked": "Revoked Dev <revoked@example.com>",
        "forge": "GitHub <noreply@github.com>",
    }
    for uid in names.values():
        gpg(signer, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "1y")
    # Created in 2020 with a one-day life: expired now.
    gpg(
        signer,
        "--passphrase",
        "",
        "--faked-system-time",
        "20200101T000000",
        "--quick-gen-key",
        "Expired Dev <expired@example.com>",
        "ed25519",
        "sign",
        "1d",
    )
    names["expired"] = "Expired Dev <expired@example.com>"
    fpr = {k: fingerprint(signer, uid.split("<")[1].rstrip(">")) for k, uid in names.items()}

    # The verifying keyring: every public key imported, but only some trusted ("fully", direct trust model).
    (verify / "gpg.conf").write_text("trust-model direct\n")
    gpg(verify, "--import", input=gpg(signer, "--export").stdout)
    trusted = "".join(f"{fpr[k]}:5:\n" for k in ("good", "revoked", "expired", "forge"))
    gpg(verify, "--import-ownertrust", input=trusted.encode())
    rev = (signer / "openpgp-revocs.d" / f"{fpr['revoked']}.rev").read_text().replace(":-----BEGIN", "-----BEGIN")
    gpg(verify, "--import", input=rev.encode())

    wrapper = root / "gpg-2020"
    wrapper.write_text('#!/bin/sh\nexec gpg --faked-system-time 20200101T010000 "$@"\n')
    wrapper.chmod(0o755)
    return GpgKeys(signer, verify, wrapper, fpr)
