"""The team's model, out of process: a sandboxed oracle and a trusted torch module that asks it.

Security rules:
* Team code (the model definition and whatever it imports) runs only in the oracle, a sandboxed process
  (:mod:`airlock.sandbox`) started by :class:`Oracle`. The trusted evaluator never imports it, so model code that
  monkeypatches ``gates.*`` or ``sys.modules`` patches only the oracle's own process: every verdict, metric and
  piece of evidence is computed here, on this side.
* Everything the oracle sends is untrusted input: each frame is bounded (header size, dtype float32 only, exactly
  the shape asked for), non-finite numbers are refused, and a stalled oracle is a timeout. A broken answer raises
  :class:`OracleError`, which the evaluator turns into a refusal.
* The oracle answers for the model. It can answer falsely: a model may behave differently when evaluated than when
  served (judged by what it answers), or return gradients that do not match its outputs (caught: the robustness
  gate checks them against finite differences first). Neither changes how an answer is judged on this side.

:class:`RemoteModel` is a ``torch.nn.Module`` whose forward asks the oracle for logits and whose backward asks for
the vector-Jacobian product with respect to the input (a custom ``torch.autograd.Function``), so ART's
``PyTorchClassifier`` (PGD, APGD, membership inference, copycat queries), the torch Neural Cleanse and the accuracy
gates run on it unchanged. ``activations(x, layer)`` returns a layer's activations (spectral signatures).
"""

from __future__ import annotations

import json
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airlock import _oracle_server as _wire
from airlock.errors import OracleError
from airlock.sandbox import Job

SERVER = Path(_wire.__file__)
MAX_ARRAY_BYTES = 1 << 30


class Oracle:
    """One sandboxed process holding the team's model code (one commit export) and any number of its models."""

    def __init__(self, job: Job, timeout: float = 600.0, on_line: Callable[[str], None] | None = None) -> None:
        if "oracle.py" not in job.ro:
            job.ro["oracle.py"] = SERVER
        self.job, self.timeout = job, timeout
        self.proc = job.spawn(["{python}", "-I", job.path("oracle.py"), str(job.threads)])
        self._in = self.proc.stdin
        self._fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        self._buf = bytearray()
        self._log = _drain(self.proc.stderr, on_line)
        self.calls = 0
        self._closed = False

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        # Closed means closed: a later question is refused here, never answered from what is left in the pipe (the
        # "quit" acknowledgement) or by a process that has not quite ended.
        self._closed = True
        if self.proc.poll() is None:
            try:
                _wire.write_frame(self._in, {"op": "quit"})  # type: ignore[arg-type]
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - closing: whatever failed, the process is killed below
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- the wire ------------------------------------------------------------------------------------------------

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OracleError(
                    f"the model (sandboxed) did not answer within {self.timeout:g} s",
                    "make the model faster or raise training.timeout_seconds",
                )
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, max(65536, n - len(self._buf)))
                if not chunk:
                    raise OracleError(
                        f"the model's sandbox exited (code {self.proc.poll()}): {self._log.last()}",
                        "check that training/model.py builds the architecture the trainer saved",
                    )
                self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def request(
        self, header: dict, arrays: tuple = (), expect: list[tuple[int | None, ...]] | None = None
    ) -> tuple[dict, list[np.ndarray]]:
        """Send one request; read and validate one answer. ``expect``: the shape of each array the answer must
        hold (None in a dimension = any size up to the byte limit)."""
        self.calls += 1
        if self._closed:
            raise OracleError(
                "the model's sandbox is gone: it was closed", "an Airlock bug: a model was asked after its oracle ended"
            )
        try:
            _wire.write_frame(self._in, header, arrays)  # type: ignore[arg-type]
        except (BrokenPipeError, OSError, ValueError):
            raise OracleError(
                f"the model's sandbox is gone: {self._log.last()}",
                "check that training/model.py builds the architecture the trainer saved",
            ) from None
        deadline = time.monotonic() + self.timeout
        (n,) = struct.unpack(">I", self._read(4, deadline))
        if n > _wire.MAX_HEADER:
            raise OracleError("the model's sandbox sent an oversized answer", "the model code is misbehaving")
        try:
            head = json.loads(self._read(n, deadline))
        except (ValueError, UnicodeDecodeError):
            raise OracleError(
                "the model's sandbox sent an unreadable answer", "the model code is misbehaving"
            ) from None
        if not isinstance(head, dict):
            raise OracleError("the model's sandbox sent an unreadable answer", "the model code is misbehaving")
        specs = head.get("arrays", [])
        if isinstance(head.get("error"), str) and not specs:
            raise OracleError(
                f"the model failed in its sandbox: {head['error'][:300]}",
                "check that training/model.py builds the architecture the trainer saved",
            )
        expect = expect or []
        if not isinstance(specs, list) or len(specs) != len(expect):
            raise OracleError(
                "the model's sandbox answered with the wrong number of arrays", "the model code is misbehaving"
            )
        out = []
        for spec, want in zip(specs, expect):
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if not (
                isinstance(spec, dict)
                and spec.get("dtype") in _wire.DTYPES
                and isinstance(shape, list)
                and len(shape) == len(want)
                and all(type(d) is int and d >= 0 for d in shape)
                and all(w is None or w == d for w, d in zip(want, shape))
            ):
                raise OracleError(
                    f"the model answered an array of shape {shape}, expected {list(want)}",
                    "the model's output must match training.json (nb_classes, input_shape)",
                )
            size = 4 * int(np.prod(shape, dtype=np.int64))
            if size > MAX_ARRAY_BYTES:
                raise OracleError("the model's sandbox sent an oversized array", "the model code is misbehaving")
            a = np.frombuffer(self._read(size, deadline), dtype="<f4").reshape(shape)
            if not np.isfinite(a).all():
                raise OracleError("the model answered NaN or infinity", "make the model's outputs finite")
            out.append(a.copy())
        return head, out

    # -- models --------------------------------------------------------------------------------------------------

    def load(self, model_id: str, model_dir: str, meta: dict) -> RemoteModel:
        """Build the model from the export in its sandbox: ``model_dir`` is the path *inside* the sandbox."""
        head, _ = self.request({"op": "load", "id": model_id, "src": self.job.path("src"), "model_dir": model_dir})
        layers = head.get("layers")
        names = [str(x) for x in layers[:10000]] if isinstance(layers, list) else []
        return RemoteModel(self, model_id, meta, names)


class _Remote(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, model):  # type: ignore[override]
        need = bool(ctx.needs_input_grad[0])
        arr = x.detach().to(torch.float32).cpu().numpy()
        head, (logits,) = model.oracle.request(
            {"op": "forward", "id": model.model_id, "grad": need}, (arr,), [(arr.shape[0], model.nb_classes)]
        )
        ctx.model, ctx.handle, ctx.shape, ctx.dtype = model, head.get("handle"), arr.shape, x.dtype
        return torch.from_numpy(logits).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if ctx.handle is None:
            raise OracleError("a gradient was asked of a forward pass made without one", "an Airlock bug: report it")
        g = grad_out.detach().to(torch.float32).contiguous().numpy()
        _, (gx,) = ctx.model.oracle.request({"op": "vjp", "handle": ctx.handle}, (g,), [tuple(ctx.shape)])
        return torch.from_numpy(gx).to(ctx.dtype), None


class RemoteModel(torch.nn.Module):
    """A trusted stand-in for the team's model: every forward and backward is a question to the sandbox."""

    def __init__(self, oracle: Oracle, model_id: str, meta: dict, layers: list[str]) -> None:
        super().__init__()
        self.oracle, self.model_id, self.layers = oracle, model_id, layers
        self.nb_classes = int(meta["nb_classes"])
        self.input_shape = tuple(int(d) for d in meta["input_shape"])

    def forward(self, x):  # type: ignore[override]
        return _Remote.apply(x, self)

    def activations(self, x: np.ndarray, layer: str, batch_size: int = 1024) -> np.ndarray:
        """A layer's activations for every row of x (flattened per sample)."""
        parts = []
        for i in range(0, len(x), batch_size):
            chunk = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
            _, (a,) = self.oracle.request(
                {"op": "features", "id": self.model_id, "layer": layer}, (chunk,), [(len(chunk), None)]
            )
            parts.append(a)
        return np.concatenate(parts).astype(np.float64)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def last(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "no output")[:200]


def _drain(stream, on_line: Callable[[str], None] | None) -> _Log:
    log = _Log()

    def pump() -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            log.lines = (log.lines + [line])[-50:]
            if on_line:
                on_line(line)

    threading.Thread(target=pump, daemon=True).start()
    return log
