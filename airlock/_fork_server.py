"""The fork trainer's sandbox side: ``python -P fork.py MODULE`` inside one sandbox, cwd the commit's export.

It stands for ``python -m MODULE`` run many times (the golden stand-in's trainings, one per seed): it imports, once,
the modules outside the export that MODULE's file imports at its top level (torch, numpy, ... - seconds of start-up
per process otherwise), then for each request line on stdin forks a child that runs MODULE as ``__main__`` with the
request's arguments, exactly as ``python -m`` would (the export first on ``sys.path``), and answers one line when
the child has ended. The team's own modules are not imported before the fork: each child runs them afresh.

It decides nothing and holds nothing: the trusted side (airlock/forking.py) times each training, caps the output and
judges every model it makes like any other trainer output. Children are team code in the same sandbox as this
process; what they could forge here (an answer line) is no more than a trainer can do by training what it likes.

Self-contained on purpose (standard library only): Airlock's own package is not mounted in the sandbox.

Request: ``{"id": N, "argv": [...]}``. Answer: ``{"id": N, "code": EXIT, "tail": [last lines of its output]}``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import json
import os
import runpy
import select
import sys
import traceback

# Each child's output: under TMPDIR, the sandbox's private capped /tmp (in environment mode the job's own home).
LOGS = os.path.join(os.environ.get("TMPDIR") or "/tmp", "fork-logs")
TAIL = 20


def _file_of(module: str, path: list[str]) -> str | None:
    """MODULE's source file, found without importing anything (its packages' __init__ files are team code)."""
    spec = None
    search: list[str] | None = path
    for i, _ in enumerate(parts := module.split(".")):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    if spec is not None and spec.submodule_search_locations:  # a package: python -m runs its __main__
        spec = importlib.machinery.PathFinder.find_spec(f"{module}.__main__", search)
    return spec.origin if spec is not None else None


def _outside(name: str, root: str) -> bool:
    """Whether the top-level package of ``name`` is found outside the export (third-party or standard library)."""
    top = name.split(".")[0]
    if top in sys.builtin_module_names:
        return True
    spec = importlib.machinery.PathFinder.find_spec(top, sys.path)
    if spec is None:
        return False
    where = (
        spec.origin if spec.origin not in (None, "namespace") else next(iter(spec.submodule_search_locations or []), "")
    )
    where = os.path.realpath(where or "")
    return not (where == root or where.startswith(root + os.sep))


def preload(module: str) -> list[str]:
    """Import the modules outside the export that MODULE's file imports at its top level; return their names.
    An import that fails here is left for the child to meet as it would in a new process."""
    root = os.path.realpath(os.getcwd())
    origin = _file_of(module, sys.path)
    if origin is None or not origin.endswith(".py"):
        return []
    with open(origin, "rb") as f:
        tree = ast.parse(f.read())
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    done = []
    for name in dict.fromkeys(names):
        if name == "__future__" or not _outside(name, root):
            continue
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception:  # noqa: BLE001 - the child meets it again, in its own process, as python -m would
            pass
    return done


def _child(module: str, argv: list[str], log: str) -> None:
    """In the forked child: output to its log, no input, then ``python -m MODULE ARGV``; never returns."""
    code = 1
    try:
        # This process's stderr, held (not written) until the child ends: the trusted side waits for that pipe to
        # close, so it knows when the server and every child are gone.
        os.dup(2)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.argv = [module, *argv]
        try:
            runpy._run_module_as_main(module)  # type: ignore[attr-defined]  # what python -m calls
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int | None):
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit code 1
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing more to write
                pass
    finally:
        os._exit(code & 0xFF)


def _tail(log: str) -> list[str]:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:300] for line in lines[-TAIL:]]


def main() -> int:
    module = sys.argv[1]
    sys.path.insert(0, os.getcwd())  # as python -m puts it (this process runs with -P: not its own directory)
    os.makedirs(LOGS, exist_ok=True)
    # The answers alone on the pipe that was stdout: whatever else writes to fd 1 here (an import printing) reaches
    # stderr, and no child keeps that pipe.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    loaded = preload(module)
    out.write(json.dumps({"ready": loaded}) + "\n")
    children: dict[int, tuple[int, str]] = {}
    pending = b""
    closed = False
    while not closed or children:
        if not closed:
            ready, _, _ = select.select([0], [], [], 0.05)
            if ready:
                chunk = os.read(0, 65536)
                closed = not chunk
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    req = json.loads(line)
                    log = f"{LOGS}/{int(req['id'])}.log"
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        out.close()
                        _child(module, [str(a) for a in req["argv"]], log)
                    children[pid] = (int(req["id"]), log)
        else:
            select.select([], [], [], 0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            ident, log = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            out.write(json.dumps({"id": ident, "code": code, "tail": _tail(log)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
