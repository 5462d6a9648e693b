"""The registry's access log: every read, write, promotion and refusal - who, what, when, from which host.

One hash-chained JSON line per access in ``<registry>/access.jsonl`` (the ledger's format, :mod:`airlock.ledger`:
an edited, removed or reordered line is detected by ``airlock registry log``). The ledger records what Airlock
decided; this log records who touched the registry, reads included, so "who pulled production last Tuesday" and
"who kept getting refused" have answers. ``airlock registry log`` prints it.

Where the registry is mounted read-only (a serving pod's init container, ``templates/k8s/inference.yaml``), the
record goes to stderr as one JSON line instead, for the cluster's log collector: a read is never refused for want
of a writable log, and never goes unrecorded.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from pathlib import Path

from airlock.errors import AirlockError
from airlock.ledger import Ledger

NAME = "access.jsonl"


def actor() -> dict:
    """Who is asking: the OS user, the host, the process, and the CI/Prefect context when there is one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    who = {"user": user, "uid": os.getuid(), "host": socket.gethostname(), "pid": os.getpid()}
    for key, env in (
        ("github_actor", "GITHUB_ACTOR"),
        ("k8s_pod", "HOSTNAME"),
        ("prefect_run", "PREFECT__FLOW_RUN_ID"),
    ):
        if os.environ.get(env) and (key != "k8s_pod" or os.environ.get("KUBERNETES_SERVICE_HOST")):
            who[key] = os.environ[env]
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:2]] if sys.argv and sys.argv[0] else []
    if argv:
        who["command"] = " ".join(argv)
    return who


class AccessLog:
    def __init__(self, registry_root: Path) -> None:
        self.path = Path(registry_root) / NAME

    def record(self, op: str, **what) -> None:
        entry = {"op": op, **{k: v for k, v in what.items() if v is not None}, "by": actor()}
        try:
            Ledger(self.path).append(f"registry.{op}", entry)
        except (OSError, AirlockError):
            # A read-only registry (an init container) or a full disk: the record goes to the pod's log instead.
            print(json.dumps({"airlock_registry_access": entry}, sort_keys=True), file=sys.stderr, flush=True)

    def entries(self) -> list[dict]:
        return list(Ledger(self.path).entries())  # the chain is verified on the way
