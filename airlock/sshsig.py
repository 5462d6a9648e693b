"""SSH signatures (SSHSIG, as made by ``ssh-keygen -Y sign``) for approvals.

Signing and verifying both go through OpenSSH's own ``ssh-keygen``: approvers can sign with any key OpenSSH can
use (files, agents, hardware keys), and the approvers file is parsed by OpenSSH itself (principals, ``namespaces=``,
``valid-before``/``valid-after``), never by hand-written code.
"""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
from pathlib import Path

from airlock.errors import ApprovalError, TrustRootError

_GOOD = re.compile(r'^Good "(?P<ns>[^"]+)" signature for (?P<principal>.+) with (?P<alg>\S+) key (?P<fp>SHA256:\S+)')


def _run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, input=stdin, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise ApprovalError("ssh-keygen is not installed", "run ./setup.sh (it installs openssh-client)") from None


def sign(key: str | Path, data: bytes, namespace: str) -> str:
    key = Path(key)
    if not key.exists():
        raise ApprovalError(f"no key at {key}", "pass --key PATH to your SSH private key")
    with tempfile.TemporaryDirectory() as d:
        msg = Path(d) / "statement"
        msg.write_bytes(data)
        res = _run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", namespace, str(msg)])
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            raise ApprovalError(
                f"ssh-keygen could not sign with {key}: {err[-1] if err else res.returncode}",
                "check the key path and passphrase (or load it into ssh-agent)",
            )
        return (Path(d) / "statement.sig").read_text()


def verify(
    allowed_signers: str | Path,
    principal: str,
    namespace: str,
    data: bytes,
    signature: str,
    revoked_keys: str | Path | None = None,
) -> str:
    """Return the signing key's fingerprint, or raise ApprovalError with the reason (a key listed in
    `revoked_keys`, an OpenSSH KRL or public-key file, is refused)."""
    if not Path(allowed_signers).is_file():
        raise TrustRootError(f"cannot read signers file {allowed_signers}", "check trust.approvers in airlock.toml")
    if not principal or any(c in principal for c in "\n\r\0,*?!") or principal.startswith("-"):
        raise ApprovalError(f"malformed approver name {principal!r}", "use the principal listed in the approvers file")

    def attempt(revoked: str | Path | None):
        with tempfile.TemporaryDirectory() as d:
            sig = Path(d) / "sig"
            sig.write_text(signature)
            revocation = ["-r", str(revoked)] if revoked else []
            res = _run(
                [
                    "ssh-keygen",
                    "-Y",
                    "verify",
                    "-f",
                    str(allowed_signers),
                    "-I",
                    principal,
                    "-n",
                    namespace,
                    "-s",
                    str(sig),
                    *revocation,
                ],
                stdin=data,
            )
        out = res.stdout.decode(errors="replace").strip()
        m = _GOOD.match(out)
        ok = res.returncode == 0 and m is not None and m.group("principal") == principal and m.group("ns") == namespace
        return ok, m, res, out

    ok, m, res, out = attempt(revoked_keys)
    if not ok:
        # A revoked key fails like a bad signature: say which it is, so that the cause is named.
        if revoked_keys:
            good, m2, _, _ = attempt(None)
            if good and m2 is not None:
                raise ApprovalError(
                    f"the key {m2.group('fp')} of {principal} is revoked (listed in the revoked keys {revoked_keys})",
                    "approve with a key that is not revoked",
                )
        return_reason = (res.stderr.decode(errors="replace").strip().splitlines() or [out or "verification failed"])[-1]
        raise ApprovalError(
            f"signature does not verify for {principal} in the approvers file ({return_reason})",
            "sign with a key listed for you in the approvers file",
        )
    assert m is not None
    return m.group("fp")


def public_key_of(key: str | Path) -> tuple[str, str]:
    """(type, base64 blob) of a private key's public half (from KEY.pub, or derived by ssh-keygen -y)."""
    key = Path(key)
    pub = key.with_name(key.name + ".pub")
    if pub.exists():
        text = pub.read_text()
    else:
        res = _run(["ssh-keygen", "-y", "-f", str(key)])
        if res.returncode != 0:
            raise ApprovalError(f"cannot read the public half of {key}", "pass --key PATH to an SSH private key")
        text = res.stdout.decode()
    parts = text.split()
    if len(parts) < 2:
        raise ApprovalError(f"cannot read the public half of {key}", "pass --key PATH to an SSH private key")
    return parts[0], parts[1]


def principals_for(allowed_signers: str | Path, keytype: str, blob: str) -> list[str]:
    """Principals listed for a public key. Used only to pre-fill the approver's name; verification is OpenSSH's."""
    found: list[str] = []
    for line in Path(allowed_signers).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        toks = line.split()
        if blob in toks:
            i = toks.index(blob)
            if i >= 1 and toks[i - 1] == keytype:
                found += toks[0].split(",")
    return found


def fingerprint(keytype: str, blob: str) -> str:
    import hashlib

    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
