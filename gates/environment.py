"""Environment gate: the trainer's Python packages are exactly the ones its lock pins, by hash.

Attacks it blocks:
* a dependency swapped on the package index, a mirror or a cache (a typosquat pinned by name, a re-uploaded wheel,
  a compromised mirror): pip checks every wheel against the lock's sha256 before unpacking it;
* install-time code: only wheels are installed, so no build script from the index runs on the host;
* a commit that points pip elsewhere (``--index-url``, ``-e``, a URL or a path in the lock): refused line by line;
* an environment altered after it was built: its tree digest is checked again before every run.

The lock comes from the verified commit; the installed environment is Airlock's (airlock/trainer_env.py). Without
``training.lock`` the gate passes with ``environment.unpinned``: team code runs in Airlock's own environment, which
the provenance and the AIBOM say.
"""

from __future__ import annotations

from pathlib import Path

from airlock import trainer_env
from airlock.errors import TrainerEnvError
from gates._result import GateResult

GATE = "environment"


def check(lock: str | None, src: Path, cache: Path, on_line=None) -> GateResult:
    if lock is None:
        return GateResult.ok(
            GATE,
            "no training.lock: team code runs in Airlock's own Python environment (unpinned; set training.lock)",
            evidence={"lock": None},
            code="environment.unpinned",
        )
    try:
        env = trainer_env.prepare(src / lock, lock, cache, on_line)
    except TrainerEnvError as e:
        return GateResult.fail(GATE, e.one_line(), evidence={"lock": lock}, code=e.code)
    return GateResult.ok(
        GATE,
        f"{len(env.packages)} packages installed from {lock} with every hash checked",
        metrics={"packages": len(env.packages)},
        evidence={**env.describe(), "root": str(env.root)},
    )
