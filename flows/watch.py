"""The scheduled production watch (templates/prefect/prefect.yaml: ``watch-production``). The checks are
serve/watch.py's; this flow runs them and publishes the report. ``airlock watch`` runs the same checks without
Prefect."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed

from flows import _report


@flow(name="airlock-watch", persist_result=False)
def watch(config: str):
    from airlock import policy
    from serve.watch import check

    report = check(policy.load(config))
    _report.publish_markdown("production-watch", report.markdown(), "production re-verified and re-evaluated")
    if report.ok:
        return Completed(message=f"production {report.digest} verifies and holds its golden accuracy")
    failed = "; ".join(c["detail"] for c in report.checks if not c["ok"])
    return Failed(message=failed)
