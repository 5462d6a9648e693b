"""Sigstore keyless: no long-lived key at all. The workload's OIDC identity token buys a ten-minute certificate from
Fulcio naming that identity, the signature is logged in Rekor, and verifiers trust the identity and its issuer
(airlock/verification.py ``Keyless``), checked offline against a pinned trust configuration.

Where the token comes from:
* **GitHub Actions** (``signing.identity_token`` unset): the job's ambient credential, which exists only in a job
  with ``permissions: id-token: write`` (.github/workflows/retrain-keyless.yml). The certificate then names the
  workflow and ref, e.g. ``https://github.com/ORG/REPO/.github/workflows/retrain-keyless.yml@refs/heads/main``.
* **Kubernetes** (``signing.identity_token = "/var/run/secrets/tokens/sigstore"``): a projected service-account
  token with audience ``sigstore``, re-read at every signing (the kubelet rotates it). Public Fulcio accepts the
  cluster's issuer only where it is configured (EKS, GKE and AKS issuers are); otherwise run your own Fulcio and
  pass its trust configuration (``signing.sigstore_trust_config``). See docs/policy.md.

Security rules:
* Never a browser flow: without a token the signer refuses, with what to set, instead of waiting for a login.
* The token is a bearer credential for the identity's certificate while it lives: it is read by Airlock's own
  process at signing time only, never written anywhere, never put in the provenance, and the sandbox's allowlisted
  environment carries neither it nor GitHub's token-request variables (tests/test_signing_modes.py).
* A token that is malformed, expired or not for the ``sigstore`` audience is refused here, by reason, before any
  network call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from airlock.errors import SigningError

AUDIENCE = "sigstore"


@dataclass
class KeylessSigner:
    identity_token: Path | None = None  # a file holding the OIDC token; None: the CI's ambient credential
    trust_config: Path | None = None  # sigstore ClientTrustConfig JSON (a private Sigstore); None: public good
    # One token per signer: the provenance names the identity of the very token that then signs. A signer is built
    # for one signing (flows/retrain.py sign_and_stage), well inside a token's lifetime.
    _token: tuple[str, str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def token(self) -> tuple[str, str, str]:
        """(raw token, its identity, its issuer), or SigningError saying why there is none usable."""
        if self._token is None:
            self._token = self._read_token()
        return self._token

    def _read_token(self) -> tuple[str, str, str]:
        from sigstore import oidc

        if self.identity_token is not None:
            try:
                raw = self.identity_token.read_text().strip()
            except OSError as e:
                raise SigningError(
                    f"cannot read the OIDC identity token at {self.identity_token}: {e.strerror}",
                    "mount a projected service-account token with audience 'sigstore' there (docs/policy.md)",
                ) from None
        else:
            try:
                raw = oidc.detect_credential(AUDIENCE) or ""
            except oidc.IdentityError as e:
                raise SigningError(
                    f"the CI's ambient OIDC credential is unusable: {' '.join(str(e).split())[:160]}",
                    "give the job `permissions: id-token: write`",
                ) from None
            if not raw:
                raise SigningError(
                    "keyless signing needs an OIDC identity and none is here (not a GitHub Actions job with "
                    "id-token: write, and signing.identity_token is not set)",
                    "sign in such a job, or set signing.identity_token to a projected service-account token file",
                )
        _plain_reasons(raw)
        try:
            tok = oidc.IdentityToken(raw, client_id=AUDIENCE)
        except oidc.IdentityError as e:
            raise SigningError(
                f"the OIDC identity token is not usable for Sigstore: {' '.join(str(e).split())[:160]}",
                "it must be an unexpired JWT with audience 'sigstore'",
            ) from None
        issuer = tok.federated_issuer or tok.issuer
        return raw, _certificate_identity(raw, issuer, tok.identity), issuer

    def configure(self, config):
        raw, _, _ = self.token()
        if self.trust_config is not None and not self.trust_config.is_file():
            raise SigningError(
                f"no Sigstore trust configuration at {self.trust_config}", "fix signing.sigstore_trust_config"
            )
        return config.use_sigstore_signer(identity_token=raw, trust_config=self.trust_config)

    def describe(self) -> dict:
        # The identity the certificate will name, never the token. No usable token: the refusal comes here already.
        _, identity, issuer = self.token()
        return {"mode": "keyless", "key": f"sigstore {identity} (issuer {issuer})"}


def _certificate_identity(raw: str, issuer: str, identity: str) -> str:
    """What Fulcio will put in the certificate's SAN, i.e. what a verifier's ``identity`` must say. For GitHub
    Actions that is the workflow file and ref (``job_workflow_ref``), not the token's ``sub``."""
    if issuer != "https://token.actions.githubusercontent.com":
        return identity
    import jwt

    ref = jwt.decode(raw, options={"verify_signature": False}).get("job_workflow_ref")  # validated just above
    return f"https://github.com/{ref}" if isinstance(ref, str) and ref else identity


def _plain_reasons(raw: str) -> None:
    """The common ways a token is unusable, said plainly (sigstore calls all of them "malformed")."""
    import time

    import jwt

    try:
        claims = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise SigningError(
            "the OIDC identity token is not usable for Sigstore: it is not a JWT", "check where the token comes from"
        ) from None
    exp, aud = claims.get("exp"), claims.get("aud")
    if isinstance(exp, int | float) and exp < time.time():
        raise SigningError(
            f"the OIDC identity token is not usable for Sigstore: it expired at {time.strftime('%H:%M:%S UTC', time.gmtime(exp))}",
            "take a fresh one (a projected token is rotated by the kubelet: read the file, do not copy it)",
        )
    if aud != AUDIENCE and not (isinstance(aud, list) and AUDIENCE in aud):
        raise SigningError(
            f"the OIDC identity token is not usable for Sigstore: its audience is {aud!r}, not {AUDIENCE!r}",
            f"request it for audience {AUDIENCE!r} (Kubernetes: serviceAccountToken.audience)",
        )
