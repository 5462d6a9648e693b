"""Alerts as JSON lines in Falco's output format, so that Falcosidekick (or any log pipeline that routes Falco's
events) routes them beside the cluster's Falco rules: ``output``, ``priority``, ``rule``, ``time``, ``source``,
``tags``, ``hostname`` and ``output_fields``."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sys
import threading
from pathlib import Path

SOURCE = "airlock"


class Alerts:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.sent: list[dict] = []  # this process's, newest last (kept for `airlock watch` and the tests)

    def emit(self, rule: str, priority: str, output: str, fields: dict, tags: list[str]) -> dict:
        event = {
            "output": output,
            "priority": priority,
            "rule": rule,
            "time": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "source": SOURCE,
            "tags": sorted({"airlock", *tags}),
            "hostname": socket.gethostname(),
            "output_fields": {k: v for k, v in fields.items() if v is not None},
        }
        line = json.dumps(event, sort_keys=True)
        with self._lock:
            self.sent.append(event)
            if self.path is None:
                print(line, file=sys.stderr, flush=True)
            else:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
        return event
