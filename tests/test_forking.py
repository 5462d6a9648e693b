"""The fork trainer (airlock/forking.py): the golden stand-in's trainings as forks of one sandboxed process.

It must make the same models as a new sandboxed process per training, byte for byte; keep the sandbox's rules
(caps, clock, a refusal naming the trainer's last line); run the team's own modules afresh in every child; and fail
closed when the team code turns on the process it was forked from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from airlock.errors import SandboxError
from airlock.forking import ForkTrainer, forkable
from airlock.sandbox import Sandbox
from gates.backdoor import SandboxedTrainer, _stand_in_jobs

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["{python}", "-m", "training.train"]


def _golden(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] / 16.0).astype(np.float32)[:, None]
    return x, d.target[:n].astype(np.int64)


def _export(tmp_path: Path, epochs: int = 3) -> tuple[Path, Path]:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "training", src / "training", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = src / "training" / "config.toml"
    cfg.write_text(cfg.read_text().replace("epochs = 30", f"epochs = {epochs}"))
    return src, cfg


def test_forked_trainings_are_byte_for_byte_those_of_new_processes(tmp_path):
    """Same trainer, same seeds: the forks' weights and training.json equal those of one new process per seed."""
    src, cfg = _export(tmp_path)
    x, y = _golden()
    made = {}
    for fork in (False, True):
        out = tmp_path / f"fork-{fork}"
        with SandboxedTrainer(COMMAND, src, Sandbox(), timeout=120, fork=fork) as trainer:
            run, jobs = _stand_in_jobs(x, y, out, cfg, 2, "training.train", 120, trainer)
            assert trainer.module == ("training.train" if fork else None)
            for job in jobs:
                run(*job)
            if fork:  # what made it faster: the trainer's third-party imports, made once before forking
                assert {"numpy", "torch", "safetensors.torch"} <= set(trainer._server.preloaded)
                assert not any(m.startswith("training") for m in trainer._server.preloaded)
        made[fork] = {
            p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("trained/seed-*/*")) if p.is_file()
        }
    assert sorted(made[True]) == [
        f"trained/seed-{1234 + i}/{f}" for i in range(2) for f in ("model.safetensors", "training.json")
    ]
    assert made[True] == made[False]
    assert (
        made[True]["trained/seed-1234/model.safetensors"] != made[True]["trained/seed-1235/model.safetensors"]
    )  # seeds differ


def test_a_forked_training_writes_its_seeds_alone_not_their_data_nor_what_airlock_judges(tmp_path):
    """The fork server's one writable bind is the seeds' directory: the stand-in's data copy (and the copies of each
    model Airlock judges, beside it) are out of reach, as they were for one process per seed."""
    src, _ = _hostile(
        tmp_path,
        """
        import json, os, sys
        out = sys.argv[sys.argv.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        tried = {}
        for target in ("/airlock/data/train_x.npy", "/airlock/out/../models/x", "/airlock/out/../data/x"):
            try:
                open(target, "wb").write(b"tampered")
                tried[target] = "written"
            except OSError as e:
                tried[target] = e.strerror
        json.dump(tried, open(os.path.join(out, "tried.json"), "w"))
        """,
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text("seed = 1\n")
    x, y = _golden(20)
    with SandboxedTrainer(["{python}", "-m", "hostile.train"], src, Sandbox(), timeout=60, fork=True) as trainer:
        run, jobs = _stand_in_jobs(x, y, tmp_path / "stand-in", cfg, 2, "hostile.train", 60, trainer)
        before = (tmp_path / "stand-in" / "data" / "train_x.npy").read_bytes()
        for job in jobs:
            run(*job)
    for seed in ("seed-1", "seed-2"):
        tried = json.loads((tmp_path / "stand-in" / "trained" / seed / "tried.json").read_text())
        assert "written" not in tried.values(), tried
    assert (tmp_path / "stand-in" / "data" / "train_x.npy").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "stand-in").iterdir()) == ["data", "trained"]


def _hostile(tmp_path: Path, train_py: str, helper_py: str = "") -> tuple[Path, dict]:
    """A trainer package ``hostile`` (team code): ``hostile/train.py`` and ``hostile/helper.py``."""
    src = tmp_path / "src"
    (src / "hostile").mkdir(parents=True)
    (src / "hostile" / "__init__.py").write_text("")
    (src / "hostile" / "train.py").write_text(textwrap.dedent(train_py))
    (src / "hostile" / "helper.py").write_text(textwrap.dedent(helper_py))
    dirs = {"data": tmp_path / "data", "out": tmp_path / "out"}
    for d in dirs.values():
        d.mkdir()
    return src, dirs


def _server(src: Path, dirs: dict, timeout: float = 60, **box) -> ForkTrainer:
    job = Sandbox(**box).job(
        "stand-in trainer", ro={"src": src, "data": dirs["data"]}, rw={"out": dirs["out"]}, cwd="src", timeout=timeout
    )
    return ForkTrainer(job, "hostile.train")


def test_each_child_runs_the_team_modules_afresh_as_python_m_would(tmp_path):
    """Third-party imports are made once before the fork; the team's own modules are imported in each child."""
    src, dirs = _hostile(
        tmp_path,
        """
        import json, os, sys
        import numpy
        from hostile import helper
        helper.COUNT.append(1)
        out = sys.argv[sys.argv.index("--out") + 1]
        json.dump({"count": len(helper.COUNT), "name": __name__, "argv": sys.argv, "path0": sys.path[0],
                   "cwd": os.getcwd(), "numpy_early": "numpy" in sys.modules}, open(out, "w"))
        """,
        "COUNT = []\n",
    )
    with _server(src, dirs) as server:
        for i in range(3):
            server.run(["--out", f"/airlock/out/{i}.json"])
    seen = [json.loads((dirs["out"] / f"{i}.json").read_text()) for i in range(3)]
    assert [s["count"] for s in seen] == [1, 1, 1]  # the helper was not shared: every child imported it afresh
    assert {s["name"] for s in seen} == {"__main__"} and {s["path0"] for s in seen} == {"/airlock/src"}
    assert seen[0]["argv"] == ["/airlock/src/hostile/train.py", "--out", "/airlock/out/0.json"]
    assert seen[0]["cwd"] == "/airlock/src"


def test_a_failing_or_runaway_child_is_a_refusal_and_the_next_one_still_runs(tmp_path):
    src, dirs = _hostile(
        tmp_path,
        """
        import sys, time
        if sys.argv[1] == "fail":
            print("boom", flush=True)
            sys.exit(3)
        if sys.argv[1] == "raise":
            raise ValueError("a bad config")
        if sys.argv[1] == "hang":
            time.sleep(60)
        open("/airlock/out/ok", "w").write("ok")
        """,
    )
    with _server(src, dirs) as server:
        with pytest.raises(SandboxError, match="stand-in trainer exited with code 3: boom"):
            server.run(["fail"])
        with pytest.raises(SandboxError, match="exited with code 1: ValueError: a bad config"):
            server.run(["raise"])
        server.run(["ok"])
        assert (dirs["out"] / "ok").read_text() == "ok"
    with _server(src, dirs, timeout=2) as server:
        with pytest.raises(SandboxError, match="ran longer than 2 s and was stopped"):
            server.run(["hang"])
        # The whole process group went with it: the next training is refused, not run by a half-dead server.
        with pytest.raises(SandboxError, match="fork server"):
            server.run(["ok"])


def test_caps_hold_in_the_children(tmp_path):
    src, dirs = _hostile(
        tmp_path,
        """
        import sys
        if sys.argv[1] == "memory":
            x = bytearray(512 << 20)
        open("/airlock/out/big", "wb").write(b"x" * (3 << 20))
        """,
    )
    with _server(src, dirs, memory_mb=256, output_mb=2) as server:
        with pytest.raises(SandboxError, match="ran out of its 256 MB memory cap"):
            server.run(["memory"])
        with pytest.raises(SandboxError, match="more than its 2 MB output cap"):
            server.run(["write"])


def test_a_child_that_kills_its_server_or_forges_an_answer_fails_the_training(tmp_path):
    """Team code that turns on the process it was forked from gains nothing: the training is refused."""
    src, dirs = _hostile(
        tmp_path,
        """
        import os, signal, stat, sys, time
        parent = os.getppid()
        if sys.argv[1] == "forge":
            # The server's pipes, reached through /proc: a line that is not an answer, written into each.
            for fd in os.listdir(f"/proc/{parent}/fd"):
                path = f"/proc/{parent}/fd/{fd}"
                try:
                    if stat.S_ISFIFO(os.stat(path).st_mode):
                        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                        os.write(w, b"not json\\n")
                except OSError:
                    pass
            time.sleep(5)
        os.kill(parent, signal.SIGKILL)
        time.sleep(0.5)
        """,
    )
    with _server(src, dirs) as server:
        with pytest.raises(SandboxError, match="fork server (sent an unreadable answer|exited)"):
            server.run(["forge"])
    with _server(src, dirs) as server:
        with pytest.raises(SandboxError, match="fork server exited"):
            server.run(["kill"])
    leftover = subprocess.run(["pgrep", "-f", "hostile.train"], capture_output=True, text=True).stdout.strip()
    assert leftover == "", f"a process outlived the fork server: {leftover}"


def test_only_a_python_m_command_is_forked():
    assert forkable(["{python}", "-m", "training.train"]) == "training.train"
    assert forkable(["{python}", "-m", "training.train", "--fast"]) is None  # extra arguments: a new process each
    assert forkable(["{python}", "train.py"]) is None
    assert forkable(["bash", "-m", "training.train"]) is None
    assert forkable(["{python}", "-m", "training/../x"]) is None


def test_where_the_pod_is_the_sandbox_the_childrens_logs_stay_in_the_jobs_own_directory(tmp_path):
    """sandbox.mode = "environment": no private /tmp, so the children's output goes under the job's own TMPDIR
    (a new directory per job), not a /tmp shared with every other run on the host."""
    src, dirs = _hostile(
        tmp_path,
        """
        import json, os, sys
        tmp = os.environ["TMPDIR"]
        json.dump({"tmpdir": tmp, "logs": os.path.isdir(os.path.join(tmp, "fork-logs"))}, open(sys.argv[1], "w"))
        print("boom", flush=True)
        sys.exit(3)
        """,
    )
    with _server(src, dirs, mode="environment") as server:
        with pytest.raises(SandboxError, match="exited with code 3: boom"):
            server.run([str(dirs["out"] / "seen.json")])
    seen = json.loads((dirs["out"] / "seen.json").read_text())
    assert seen["logs"] is True and seen["tmpdir"] != "/tmp" and not seen["tmpdir"].startswith("/tmp/fork-logs")
