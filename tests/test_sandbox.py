"""The sandbox, attacked as a hostile trainer would: each test runs real code in real bubblewrap.

Every attack from the trust-boundary issue that needs no full run is here: reading the signing key by path and the
parent's environment through /proc, editing trust files, the policy, the registry, the ledger and Airlock's own
source, reaching a listener on 127.0.0.1, leaving a daemon behind, writing outside --out, breaking the memory and
output caps, and a sandbox that cannot start. The full-flow versions are in tests/test_trust_boundary.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import airlock
from airlock import sandbox
from airlock.sandbox import Sandbox, SandboxError

SECRETS = {
    "AIRLOCK_SIGNING_KEY": "/keys/model.key",
    "SSH_AUTH_SOCK": "/tmp/agent.sock",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "gh-oidc",
    "ACTIONS_ID_TOKEN_REQUEST_URL": "https://example/token",
    "GITHUB_TOKEN": "ghs_x",
    "PREFECT_API_KEY": "pnu_x",
    "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "SIGSTORE_ID_TOKEN": "jwt",
    "SOME_NEW_TOKEN_NOBODY_LISTED": "x",
    "AIRLOCK_REGISTRY_KEY": "c2VjcmV0LXJlZ2lzdHJ5LWtleQ==",  # registry.encryption_key = "env:AIRLOCK_REGISTRY_KEY"
}


def refused(excinfo, *needles: str) -> None:
    """The refusal's one line (what is wrong — what to do) names every needle."""
    line = excinfo.value.one_line()
    for n in needles:
        assert n in line, (n, line)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def layout(tmp_path):
    """A run's layout: the export and the output the trainer gets, and everything it must not touch."""
    d = {name: tmp_path / name for name in ("src", "data", "out")}
    for p in d.values():
        p.mkdir()
    protected = {
        "key": tmp_path / "keys" / "model_signing.key",
        "registry_key": tmp_path / "keys" / "registry.key",
        "approvers": tmp_path / "trust" / "approvers",
        "run_trust_copy": tmp_path / "runs" / "r1" / "trust" / "approvers",
        "policy": tmp_path / "airlock.toml",
        "registry": tmp_path / "registry" / "production" / "CURRENT",
        "ledger": tmp_path / "ledger.jsonl",
    }
    for name, p in protected.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{name} {uuid.uuid4().hex}\n")
    d["protected"] = protected
    return d


def _job(layout, timeout: float = 60, **kw):
    box = Sandbox(**kw)
    return box.job(
        "trainer",
        ro={"src": layout["src"], "data": layout["data"]},
        rw={"out": layout["out"]},
        cwd="src",
        timeout=timeout,
    )


def _script(layout, body: str) -> list[str]:
    path = layout["src"] / "attack.py"
    path.write_text(textwrap.dedent(body))
    return ["{python}", "attack.py"]


def test_trainer_environment_is_an_allowlist_and_the_parents_is_unreachable(layout, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    job = _job(layout)
    job.run(
        _script(
            layout,
            """
        import glob, json, os
        seen = []
        for e in glob.glob("/proc/*/environ"):          # the flow's environment, through /proc/<parent pid>
            try:
                seen.append(open(e, "rb").read().decode(errors="replace"))
            except OSError:
                pass
        json.dump({"env": dict(os.environ), "proc": seen, "pids": [p for p in os.listdir("/proc") if p.isdigit()]},
                  open("/airlock/out/seen.json", "w"))
    """,
        )
    )
    seen = json.loads((layout["out"] / "seen.json").read_text())
    assert not set(SECRETS) & set(seen["env"]), set(SECRETS) & set(seen["env"])
    assert not any(k in blob for blob in seen["proc"] for k in SECRETS)
    assert len(seen["pids"]) <= 3  # its own PID namespace: no other process is visible
    assert seen["env"]["HOME"] == "/tmp/home" and seen["env"]["OMP_NUM_THREADS"] == "1"


def test_trainer_cannot_read_keys_or_write_trust_roots_policy_registry_ledger_or_airlock(layout):
    protected = layout["protected"]
    before = {k: _digest(p) for k, p in protected.items()}
    airlock_init = Path(airlock.__file__)
    airlock_before = _digest(airlock_init)
    targets = {
        **{k: str(p) for k, p in protected.items()},
        "airlock_source": str(airlock_init),
        "python_stdlib": os.path.join(os.path.dirname(os.__file__), "os.py"),
    }
    job = _job(layout)
    job.run(
        _script(
            layout,
            f"""
        import json
        targets = {json.dumps(targets)}
        result = {{}}
        for name, path in targets.items():
            try:
                result[name + ":read"] = open(path).read()
            except OSError as e:
                result[name + ":read"] = type(e).__name__
            try:
                with open(path, "a") as f:
                    f.write("attacker ssh-ed25519 AAAA\\n")
                result[name + ":write"] = "WROTE"
            except OSError as e:
                result[name + ":write"] = type(e).__name__
        json.dump(result, open("/airlock/out/result.json", "w"))
    """,
        )
    )
    result = json.loads((layout["out"] / "result.json").read_text())
    for name in protected:
        assert result[name + ":read"] == "FileNotFoundError", (name, result)  # not there at all
        assert result[name + ":write"] != "WROTE", (name, result)
    assert result["airlock_source:write"] != "WROTE" and result["python_stdlib:write"] != "WROTE", result
    assert {k: _digest(p) for k, p in protected.items()} == before
    assert _digest(airlock_init) == airlock_before


def test_trainer_writes_only_its_output(layout):
    job = _job(layout)
    job.run(
        _script(
            layout,
            """
        import json, os
        r = {}
        for path in ("/airlock/out/../model/extra.py", "/airlock/src/training/planted.py", "/airlock/data/x.npy",
                     "/usr/lib/planted", "/planted", "/airlock/out/model.safetensors"):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").write("x")
                r[path] = "WROTE"
            except OSError as e:
                r[path] = type(e).__name__
        json.dump(r, open("/airlock/out/r.json", "w"))
    """,
        )
    )
    r = json.loads((layout["out"] / "r.json").read_text())
    assert r.pop("/airlock/out/model.safetensors") == "WROTE"
    assert all(v != "WROTE" for v in r.values()), r
    assert not (layout["src"].parent / "model").exists()
    assert not (layout["src"] / "training").exists()


def test_trainer_reaches_no_listener_on_the_host(layout):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        job = _job(layout)
        job.run(
            _script(
                layout,
                f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"exfiltrated key")
                print("CONNECTED")
            except OSError as e:
                print("refused", type(e).__name__)
        """,
            ),
            on_line=lambda line: (layout["out"] / "net.txt").write_text(line),
        )
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever arrived
    finally:
        server.close()
    assert (layout["out"] / "net.txt").read_text().startswith("refused")


def test_no_process_outlives_the_trainer(layout):
    token = f"airlock-daemon-{uuid.uuid4().hex}"
    job = _job(layout)
    job.run(
        _script(
            layout,
            f"""
        import os, subprocess, time
        # A double-forked, session-detached daemon that keeps writing into the output after the trainer exits.
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("{sys.executable}", ["{sys.executable}", "-c",
                          "import time\\nwhile True:\\n open('/airlock/out/beat','a').write('x'); time.sleep(0.1)",
                          "{token}"])
            os._exit(0)
        time.sleep(0.5)
    """,
        )
    )
    size = (layout["out"] / "beat").stat().st_size
    leftover = subprocess.run(["pgrep", "-f", token], capture_output=True, text=True).stdout.strip()
    assert leftover == "", f"a process outlived the sandbox: {leftover}"
    import time

    time.sleep(0.4)
    assert (layout["out"] / "beat").stat().st_size == size  # and nothing writes any more


def test_memory_cap_is_a_refusal(layout):
    job = _job(layout, memory_mb=256)
    with pytest.raises(SandboxError, match="ran out of its 256 MB memory cap"):
        job.run(_script(layout, "x = bytearray(512 << 20)\n"))


def test_output_cap_is_a_refusal(layout):
    job = _job(layout, output_mb=2)
    with pytest.raises(SandboxError, match="more than its 2 MB output cap"):
        job.run(_script(layout, "open('/airlock/out/big', 'wb').write(b'x' * (3 << 20))\n"))
    with pytest.raises(SandboxError, match="exited with code 1: OSError"):  # the private /tmp is capped too
        _job(layout, output_mb=2).run(
            _script(
                layout,
                """
            try:
                for i in range(8):
                    open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20))
            except OSError as e:
                raise SystemExit(f"OSError {e.errno}")
        """,
            )
        )
    job = _job(layout, output_mb=2)  # many small files: the watcher sums the directory
    with pytest.raises(SandboxError, match="more than its 2 MB output cap"):
        job.run(
            _script(
                layout,
                """
            import time
            for i in range(64):
                open(f'/airlock/out/f{i}', 'wb').write(b'x' * (256 << 10))
            time.sleep(2)
        """,
            )
        )


def test_failing_trainer_is_a_refusal_with_its_last_line(layout):
    with pytest.raises(SandboxError, match="exited with code 3: boom"):
        _job(layout).run(_script(layout, "import sys; print('boom'); sys.exit(3)\n"))


def test_runaway_and_silent_trainers_are_stopped(layout):
    with pytest.raises(SandboxError, match="longer than 1 s"):
        _job(layout, timeout=1).run(
            _script(layout, "import time\nwhile True: print('x', flush=True); time.sleep(0.2)\n")
        )
    with pytest.raises(SandboxError, match="longer than 1 s"):
        _job(layout, timeout=1).run(_script(layout, "import time; time.sleep(60)\n"))


def test_unavailable_sandbox_refuses_and_says_what_to_install(layout):
    with pytest.raises(SandboxError) as e:
        Sandbox(bwrap="/nonexistent/bwrap").check()
    refused(
        e,
        "bubblewrap (/nonexistent/bwrap) is not installed",
        "apt-get install bubblewrap",
        'sandbox.mode = "environment"',
    )
    broken = layout["src"] / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(SandboxError) as e:
        Sandbox(bwrap=str(broken)).check()
    refused(e, "bubblewrap cannot start a sandbox here", "Permission denied", "unprivileged user namespaces")
    Sandbox(mode="environment", bwrap="/nonexistent/bwrap").check()  # declared: the pod is the sandbox


def test_a_protected_path_under_a_bind_is_refused_before_anything_runs(layout):
    job = _job(layout)
    with pytest.raises(SandboxError, match="the registry .* would be visible to the trainer"):
        job.refuse_exposure({"the registry": layout["out"] / "registry"})
    job.refuse_exposure({k: p for k, p in layout["protected"].items()})  # the real layout: nothing exposed


def test_environment_mode_keeps_the_allowlist_and_caps(layout, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    job = _job(layout, mode="environment")
    out = layout["out"] / "env.json"
    job.run(["{python}", "-c", f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"])
    env = json.loads(out.read_text())
    assert not set(SECRETS) & set(env)
    assert env["HOME"] != os.environ.get("HOME") and not Path(env["HOME"]).exists()  # an empty home, removed
    assert sorted(p.name for p in layout["out"].parent.iterdir()) == [
        "airlock.toml",
        "data",
        "keys",
        "ledger.jsonl",
        "out",
        "registry",
        "runs",
        "src",
        "trust",
    ]
    with pytest.raises(SandboxError, match="ran out of its 128 MB memory cap"):
        _job(layout, mode="environment", memory_mb=128).run(_script(layout, "x = bytearray(256 << 20)\n"))
    assert Sandbox(mode="environment").describe()["isolated"] is False
    assert "without Airlock's sandbox" in Sandbox(mode="environment").describe()["warning"]


def test_python_environment_is_bound_but_not_airlocks_checkout():
    dirs = sandbox._python_dirs()
    root = Path(airlock.__file__).resolve().parents[1]
    assert all(Path(d) != root and root not in Path(d).parents for d in dirs)
    prefix = Path(sys.base_prefix).resolve()
    assert prefix.is_relative_to("/usr") or any(prefix.is_relative_to(d) for d in dirs), (prefix, dirs)


def test_without_prlimit_the_sandbox_refuses_to_start(monkeypatch, tmp_path):
    """The caps (memory per process, output, no core) are applied by util-linux's prlimit before bubblewrap runs:
    without it nothing starts uncapped, in either mode."""
    monkeypatch.setenv("PATH", str(tmp_path))  # neither prlimit nor bwrap here
    for mode in ("bubblewrap", "environment"):
        with pytest.raises(SandboxError, match=r"prlimit \(util-linux\) is not installed"):
            Sandbox(mode=mode).check()


def _trusted(tmp_path: Path, code: str, lines: list[str], grace: float = 10.0) -> sandbox.TrustedProcess:
    return sandbox.TrustedProcess(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        home=tmp_path / "home",
        timeout=60,
        what="test helper",
        on_line=lines.append,
        grace=grace,
    )


def test_a_trusted_process_started_early_gets_its_one_line_or_is_ended(tmp_path):
    """The model-gate evaluator's way of running beside the training (sandbox.TrustedProcess)."""
    lines: list[str] = []
    # Given its line, it goes on; its output comes back line by line.
    with _trusted(
        tmp_path, "import sys; print('ready', flush=True); print('got', sys.stdin.readline().strip())", lines
    ) as p:
        p.send('{"model": "m"}')
        assert p.wait() > 0
    assert lines == ["ready", 'got {"model": "m"}']

    # Left without its line (the caller failed first): its input ends, and one that reads it ends by itself ...
    lines.clear()
    with _trusted(tmp_path, "import sys; print('eof' if not sys.stdin.readline() else 'line', flush=True)", lines):
        pass
    assert lines == ["eof"]

    # ... and one that does not listen is killed after the grace period, with whatever it started.
    marker = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); open({str(marker)!r}, 'w').write(str(c.pid)); "
        "print('started', flush=True); time.sleep(60)"
    )
    with _trusted(tmp_path, code, lines, grace=0.5) as p:
        while not marker.exists() or not marker.read_text():
            time.sleep(0.05)
    child = int(marker.read_text())
    for _ in range(50):  # the kill is SIGKILL to the group: reaped by init a moment later
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the helper's child outlived it")
    with pytest.raises(SandboxError, match="exited with code -9"):
        p.wait()

    # A failure is raised where it is waited for, as Job.run would raise it.
    with _trusted(tmp_path, "import sys; print('bad'); sys.exit(4)", []) as p:
        p.send("x")
        with pytest.raises(SandboxError, match="exited with code 4: bad"):
            p.wait()
