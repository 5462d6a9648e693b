"""A mirror of the registry into MLflow (``[mlflow] tracking_uri``), where teams already look.

Security rules:
* Airlock is the authority; MLflow is a view. Nothing read back from MLflow decides anything:
  - what is mirrored comes from the registry's verified objects (the signed provenance, gate verdicts and AIBOM);
  - a version edited in MLflow (its tags, its source, a new version someone registered by hand) is never trusted
    back; it is only ever overwritten or reported.
* The ``production`` alias is set only from the registry's verified production pointer, which only a promotion
  moves. An alias moved in MLflow by anyone else is reported by ``airlock mlflow sync --check`` (exit 1) and moved
  back by ``airlock mlflow sync``, which records ``mlflow.alias.restored`` in the ledger.
* A mirror that cannot be reached never blocks a promotion and never permits one: the flow records
  ``mlflow.mirror.failed`` and goes on; the next sync catches up.

Each model appears once, found by its ``airlock.digest`` tag: an MLflow run (parameters, the gate metrics, a tag per
gate verdict, the provenance and AIBOM as artifacts) and a version of the registered model, tagged with the digest,
the signer, the Airlock run and the stage. Plain REST calls (the tracking API), so Airlock needs no MLflow package.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from airlock.errors import AirlockError, MirrorError

PRODUCTION_ALIAS = "production"
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


class Client:
    """The MLflow tracking API calls the mirror needs; every failure a one-line MirrorError."""

    def __init__(self, base: str, token: str | None = None) -> None:
        import requests

        self.base = base.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, ok_missing: bool = False, **kw) -> dict:
        import requests

        url = f"{self.base}/api/2.0/mlflow/{path}"
        try:
            r = self.session.request(method, url, timeout=60, **kw)
        except requests.RequestException as e:
            raise MirrorError(
                f"the MLflow server {self.base} cannot be reached: {type(e).__name__}", "check mlflow.tracking_uri"
            ) from None
        if r.status_code == 404 and ok_missing:
            return {}
        if r.status_code != 200:
            try:
                body = r.json()
                code, message = str(body.get("error_code", "")), str(body.get("message", ""))
            except (ValueError, AttributeError):
                code, message = "", r.text
            # Missing: RESOURCE_DOES_NOT_EXIST, or (an alias) INVALID_PARAMETER_VALUE "... not found".
            if ok_missing and (code == "RESOURCE_DOES_NOT_EXIST" or "not found" in message):
                return {}
            raise MirrorError(
                f"MLflow refused {method} {path}: HTTP {r.status_code} {code} {' '.join(message.split())[:160]}",
                "check the server, the token ($MLFLOW_TRACKING_TOKEN or mlflow.token_env) and its permissions",
            )
        try:
            return r.json() if r.content else {}
        except ValueError:
            raise MirrorError(
                f"MLflow answered {path} with something that is not JSON", "check mlflow.tracking_uri"
            ) from None

    def put_artifact(self, experiment_id: str, run_id: str, name: str, data: bytes) -> None:
        import requests

        url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/{name}"
        try:
            r = self.session.put(url, data=data, timeout=60)
        except requests.RequestException as e:
            raise MirrorError(
                f"the MLflow server {self.base} cannot be reached: {type(e).__name__}", "check it"
            ) from None
        if r.status_code != 200:
            raise MirrorError(
                f"MLflow refused the artifact {name}: HTTP {r.status_code}",
                "start the server with artifact serving (mlflow server --artifacts-destination ...)",
            )


@dataclass
class SyncReport:
    mirrored: list[str] = field(default_factory=list)  # digests newly mirrored
    alias: str | None = None  # the version the production alias names after the sync
    moved_outside: dict | None = None  # {"was": version, "digest": ...} when someone else had moved the alias
    problems: list[str] = field(default_factory=list)


def _metric_key(gate: str, name: str) -> str:
    return _KEY.sub("_", f"{gate}.{name}")[:250]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Mirror:
    def __init__(self, client: Client, experiment: str, model_name: str) -> None:
        self.client, self.experiment, self.model_name = client, experiment, model_name
        self._experiment_id: str | None = None

    @classmethod
    def from_policy(cls, pol) -> Mirror | None:
        m = pol.mlflow
        if m is None:
            return None
        return cls(Client(m.tracking_uri, os.environ.get(m.token_env)), m.experiment, m.model_name)

    # -- reads (for comparison only: nothing read here is believed) ------------------------------------------

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            got = self.client.call(
                "GET", "experiments/get-by-name", ok_missing=True, params={"experiment_name": self.experiment}
            )
            eid = (got.get("experiment") or {}).get("experiment_id")
            if eid is None:
                eid = self.client.call("POST", "experiments/create", json={"name": self.experiment}).get(
                    "experiment_id"
                )
            if not isinstance(eid, str):
                raise MirrorError(f"MLflow gave no id for experiment {self.experiment!r}", "check the server")
            self._experiment_id = eid
        return self._experiment_id

    def versions_of(self, digest: str) -> list[dict]:
        flt = f"name='{self.model_name}' and tag.`airlock.digest`='{digest}'"
        got = self.client.call("GET", "model-versions/search", params={"filter": flt, "max_results": 100})
        return [v for v in got.get("model_versions") or [] if isinstance(v, dict)]

    def alias_version(self) -> dict | None:
        got = self.client.call(
            "GET",
            "registered-models/alias",
            ok_missing=True,
            params={"name": self.model_name, "alias": PRODUCTION_ALIAS},
        )
        v = got.get("model_version")
        return v if isinstance(v, dict) else None

    # -- writes ----------------------------------------------------------------------------------------------

    def _run_for(self, model, location: str) -> str:
        """The MLflow run of a verified model (found by its digest tag, else created from the signed provenance)."""
        eid = self.experiment_id()
        got = self.client.call(
            "POST",
            "runs/search",
            json={"experiment_ids": [eid], "filter": f"tags.`airlock.digest` = '{model.digest}'", "max_results": 1},
        )
        runs = got.get("runs") or []
        if runs:
            return str(runs[0]["info"]["run_id"])
        prov: dict[str, Any] = model.provenance
        tags = {
            "airlock.digest": model.digest,
            "airlock.run_id": str(prov.get("run_id", "")),
            "airlock.location": location,
            "mlflow.source.git.commit": str((prov.get("commit") or {}).get("commit") or ""),
        }
        params = {
            "airlock.commit": (prov.get("commit") or {}).get("commit"),
            "airlock.commit_signer": (prov.get("commit") or {}).get("signer"),
            "airlock.signer": json.dumps(prov.get("signer"), sort_keys=True),
            "airlock.policy_digest": (prov.get("policy") or {}).get("digest"),
            "airlock.trainer_lock": ((prov.get("trainer") or {}).get("environment") or {}).get("lock_digest"),
        }
        for name, ds in (prov.get("datasets") or {}).items():
            if isinstance(ds, dict):
                params[f"data.{name}.root_digest"] = ds.get("root_digest")
        training = _json_file(model.model_dir / "training.json")
        for k, v in training.items():
            if isinstance(v, (str, int, float, bool)):
                params[f"training.{_KEY.sub('_', k)}"] = v
        metrics = []
        for g in prov.get("gates") or []:
            if not isinstance(g, dict) or not isinstance(g.get("gate"), str):
                continue
            tags[f"airlock.gate.{_KEY.sub('_', g['gate'])}"] = f"{g.get('verdict')} ({g.get('code')})"
            for k, v in (g.get("metrics") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
                    metrics.append(
                        {"key": _metric_key(g["gate"], k), "value": float(v), "timestamp": _now_ms(), "step": 0}
                    )
        run = self.client.call(
            "POST",
            "runs/create",
            json={
                "experiment_id": eid,
                "run_name": f"airlock-{str(prov.get('run_id', ''))[:8]}-{model.digest[7:19]}",
                "start_time": _now_ms(),
                "tags": [{"key": k, "value": str(v)[:5000]} for k, v in tags.items()],
            },
        )
        run_id = str(run["run"]["info"]["run_id"])
        plist = [{"key": k, "value": str(v)[:500]} for k, v in params.items() if v is not None]
        for i in range(0, max(len(metrics), len(plist), 1), 100):  # the API takes at most 1000 metrics, 100 params
            self.client.call(
                "POST",
                "runs/log-batch",
                json={"run_id": run_id, "metrics": metrics[i : i + 100], "params": plist[i : i + 100]},
            )
        for name in ("provenance.json", "aibom.cdx.json"):
            if (model.model_dir / name).is_file():
                self.client.put_artifact(eid, run_id, name, (model.model_dir / name).read_bytes())
        self.client.call("POST", "runs/update", json={"run_id": run_id, "status": "FINISHED", "end_time": _now_ms()})
        return run_id

    def ensure_version(self, model, location: str, stage: str, recorded: str | None) -> tuple[str, bool]:
        """(version, newly made) of the registered model for a verified model, its stage tag set. ``recorded`` is
        the version Airlock's ledger says it made for this digest: used only if MLflow still holds it unchanged
        (same digest tag, same source); else a new version is made (a version edited in MLflow is not believed)."""
        if recorded is not None:
            got = self.client.call(
                "GET", "model-versions/get", ok_missing=True, params={"name": self.model_name, "version": recorded}
            )
            v = got.get("model_version")
            if isinstance(v, dict) and v.get("source") == location and _digest_tag(v) == model.digest:
                self._tag_stage(recorded, stage)
                return recorded, False
        run_id = self._run_for(model, location)
        if not self._model_exists():
            self.client.call("POST", "registered-models/create", json={"name": self.model_name})
        signer = model.provenance.get("signer") or {}
        made = self.client.call(
            "POST",
            "model-versions/create",
            json={
                "name": self.model_name,
                "source": location,
                "run_id": run_id,
                "description": "Mirrored by Airlock. Verify with `airlock verify`; MLflow is not the authority.",
                "tags": [
                    {"key": "airlock.digest", "value": model.digest},
                    {"key": "airlock.signer", "value": json.dumps(signer, sort_keys=True)[:5000]},
                    {"key": "airlock.run_id", "value": str(model.provenance.get("run_id", ""))},
                ],
            },
        )
        version = str(made["model_version"]["version"])
        self._tag_stage(version, stage)
        return version, True

    def _tag_stage(self, version: str, stage: str) -> None:
        self.client.call(
            "POST",
            "model-versions/set-tag",
            json={"name": self.model_name, "version": version, "key": "airlock.stage", "value": stage},
        )

    def _model_exists(self) -> bool:
        got = self.client.call("GET", "registered-models/get", ok_missing=True, params={"name": self.model_name})
        return bool(got.get("registered_model"))

    def set_alias(self, version: str) -> None:
        self.client.call(
            "POST",
            "registered-models/alias",
            json={"name": self.model_name, "alias": PRODUCTION_ALIAS, "version": version},
        )


def _recorded(ledger, mirror: Mirror) -> tuple[dict[str, str], str | None]:
    """From Airlock's own ledger: digest -> the MLflow version Airlock made for it, and the version Airlock last
    pointed the alias at."""
    versions: dict[str, str] = {}
    alias = None
    for e in ledger.entries():
        d = e.get("data") or {}
        if d.get("model") != mirror.model_name or d.get("server") != mirror.client.base:
            continue
        if e.get("kind") == "mlflow.version":
            versions[str(d.get("digest"))] = str(d.get("version"))
        elif e.get("kind") in ("mlflow.alias", "mlflow.alias.restored"):
            alias = str(d.get("now"))
    return versions, alias


def sync(mirror: Mirror, registry, ledger, digests: list[str] | None = None, check: bool = False) -> SyncReport:
    """Mirror the registry's verified models (``digests``, or every one it holds) and point the production alias at
    the version Airlock made for the verified production model. ``check``: write nothing, report what differs."""
    from airlock.errors import RegistryError

    report = SyncReport()
    wanted: list[tuple[str, Any]] = []
    if digests is None:
        for stage, digest, obj in registry.objects():
            try:
                wanted.append((stage, registry.verify_object(obj, digest)))
            except RegistryError as e:
                report.problems.append(f"{digest[:19]}… in {stage} does not verify, not mirrored: {e.what}")
    else:
        wanted = [("staging", registry.find(d)) for d in digests]
    try:
        prod = registry.verify_stage("production")[0] if registry.current_pointer("production") else None
    except RegistryError as e:
        prod = None
        report.problems.append(f"production does not verify, the alias is not set: {e.what}")
    if prod is not None and all(m.digest != prod.digest for _, m in wanted):
        wanted.append(("production", prod))
    recorded, last_set = _recorded(ledger, mirror)
    seen: set[str] = set()
    for stage, model in wanted:
        if model.digest in seen:
            continue  # in staging and in production: one version, tagged with the furthest stage
        seen.add(model.digest)
        stage = "production" if prod is not None and model.digest == prod.digest else stage
        location = _source(registry, model.digest)
        if check:
            if model.digest not in recorded:
                report.problems.append(f"{model.digest[:19]}… ({stage}) is not mirrored in MLflow")
            continue
        version, created = mirror.ensure_version(model, location, stage, recorded.get(model.digest))
        if created:
            report.mirrored.append(model.digest)
            recorded[model.digest] = version
            ledger.append(
                "mlflow.version",
                {"model": mirror.model_name, "server": mirror.client.base, "digest": model.digest, "version": version},
            )
    current = mirror.alias_version()
    have = str(current["version"]) if current else None
    report.alias = have
    if prod is None:
        return report
    # The alias: only the registry's verified production pointer, and the version Airlock made for it, say where.
    want = recorded.get(prod.digest)
    if have is not None and have == want:
        return report
    # Someone moved it: it names neither the version Airlock last set nor production's.
    if have is not None and have != last_set:
        report.moved_outside = {"was": have, "digest": _digest_tag(current), "airlock_set": last_set}
    if check:
        if report.moved_outside or have != want:
            report.problems.append(
                f"MLflow's {PRODUCTION_ALIAS} alias names version {have or '(none)'}"
                + (f" ({_digest_tag(current) or 'no airlock.digest'})" if current else "")
                + f"; production is {prod.digest[:19]}… (version {want or 'not mirrored'})"
                + (", moved outside Airlock" if report.moved_outside else "")
            )
        return report
    if want is None:
        raise MirrorError(f"production {prod.digest[:19]}… has no MLflow version to alias", "run airlock mlflow sync")
    mirror.set_alias(want)
    report.alias = want
    entry = {
        "model": mirror.model_name,
        "server": mirror.client.base,
        "alias": PRODUCTION_ALIAS,
        "was": have,
        "now": want,
    }
    if report.moved_outside:
        ledger.append("mlflow.alias.restored", entry | {"digest": prod.digest, "reason": "moved outside Airlock"})
    else:
        ledger.append("mlflow.alias", entry | {"digest": prod.digest})
    return report


def _source(registry, digest: str) -> str:
    """Where the model was staged, as a URI MLflow accepts (it refuses local paths): ``airlock:///<registry>/
    staging/<hex>`` or ``oci://HOST/PREFIX/staging:m-<hex>``. The same in every stage."""
    where = registry._where_object("staging", digest)
    return f"airlock://{where}" if where.startswith("/") else "oci://" + where.split("://", 1)[1]


def _digest_tag(version: dict | None) -> str | None:
    if not version:
        return None
    tags = version.get("tags") or []
    if isinstance(tags, dict):
        return tags.get("airlock.digest")
    return next((t.get("value") for t in tags if isinstance(t, dict) and t.get("key") == "airlock.digest"), None)


def _json_file(path) -> dict:
    from airlock import untrusted

    try:
        doc = untrusted.loads(path.read_bytes(), str(path))
    except (OSError, AirlockError):
        return {}
    return doc if isinstance(doc, dict) else {}
