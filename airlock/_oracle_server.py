"""The model oracle's sandbox side: ``python -I oracle.py THREADS`` inside the sandbox, speaking frames on stdin/stdout.

This is the only place the team's model code is imported. It computes nothing but what a caller asks of the model —
logits, vector-Jacobian products with respect to the input, a layer's activations — and decides nothing: every
verdict is computed by the trusted evaluator (flows/_evaluate.py through airlock/oracle.py), which never imports team
code. Model code that patches ``gates.*``, ``sys.modules`` or this file changes what the model answers, never how the
answers are judged.

Self-contained on purpose (standard library, numpy, torch, safetensors): Airlock's own package is not mounted in the
sandbox. The framing functions are shared with the trusted client, which imports this module without running main().

Frame: 4-byte big-endian header length, a JSON header, then the raw bytes of each array the header lists as
``{"dtype": "<f4", "shape": [...]}``, in order.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, BinaryIO

MAX_HEADER = 1 << 20
DTYPES = ("<f4",)


def write_frame(f: BinaryIO, header: dict[str, Any], arrays: tuple = ()) -> None:
    import numpy as np

    arrays = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)
    head = dict(header, arrays=[{"dtype": "<f4", "shape": [int(d) for d in a.shape]} for a in arrays])
    raw = json.dumps(head).encode()
    f.write(struct.pack(">I", len(raw)))
    f.write(raw)
    for a in arrays:
        f.write(memoryview(a).cast("B"))
    f.flush()


def _exact(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError("stream closed")
        buf += chunk
    return bytes(buf)


def read_frame(f: BinaryIO) -> tuple[dict[str, Any], list]:
    """The server's reader (its input comes from the trusted side). The client validates with its own reader."""
    import numpy as np

    (n,) = struct.unpack(">I", _exact(f, 4))
    if n > MAX_HEADER:
        raise ValueError("header too large")
    header = json.loads(_exact(f, n))
    arrays = []
    for spec in header.get("arrays", []):
        shape = [int(d) for d in spec["shape"]]
        size = 4
        for d in shape:
            size *= d
        arrays.append(np.frombuffer(_exact(f, size), dtype="<f4").reshape(shape).copy())
    return header, arrays


def _load(src: str, model_dir: str):
    import importlib

    from safetensors.torch import load_file

    with open(os.path.join(model_dir, "training.json")) as fh:
        meta = json.load(fh)
    module_name, _, func = str(meta.get("architecture", "training.model:build_model")).partition(":")
    if src not in sys.path:
        sys.path.insert(0, src)
    module = importlib.import_module(module_name)
    if not str(getattr(module, "__file__", "")).startswith(src):
        raise RuntimeError(f"{module_name} did not load from the commit export")
    model = getattr(module, func or "build_model")(meta["hyperparameters"])
    model.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, [name for name, _ in model.named_modules() if name]


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    import torch

    models: dict[str, Any] = {}
    graphs: dict[int, tuple] = {}  # handle -> (input, output) kept for one vector-Jacobian product
    next_handle = 0
    while True:
        try:
            header, arrays = read_frame(inp)
        except EOFError:
            return
        op = header.get("op")
        try:
            if op == "quit":
                write_frame(out, {"ok": True})
                return
            if op == "load":
                model, layers = _load(header["src"], header["model_dir"])
                models[header["id"]] = model
                write_frame(out, {"ok": True, "layers": layers})
            elif op == "forward":
                model = models[header["id"]]
                x = torch.from_numpy(arrays[0])
                if header.get("grad"):
                    x.requires_grad_(True)
                    with torch.enable_grad():
                        y = model(x)
                    next_handle += 1
                    graphs[next_handle] = (x, y)
                    while len(graphs) > 8:  # a caller that never asks for the product: drop the oldest graph
                        graphs.pop(min(graphs))
                    write_frame(out, {"ok": True, "handle": next_handle}, (y.detach().numpy(),))
                else:
                    with torch.no_grad():
                        y = model(x)
                    write_frame(out, {"ok": True}, (y.numpy(),))
            elif op == "vjp":
                x, y = graphs.pop(int(header["handle"]))
                (g,) = torch.autograd.grad(y, x, torch.from_numpy(arrays[0]), allow_unused=True)
                write_frame(out, {"ok": True}, ((torch.zeros_like(x) if g is None else g).numpy(),))
            elif op == "features":
                model = models[header["id"]]
                captured: list = []
                module = model.get_submodule(header["layer"])
                hook = module.register_forward_hook(
                    lambda _m, _i, o, c=captured: c.append(o.detach().reshape(len(o), -1))
                )
                try:
                    with torch.no_grad():
                        model(torch.from_numpy(arrays[0]))
                finally:
                    hook.remove()
                write_frame(out, {"ok": True}, (captured[-1].numpy(),))
            else:
                write_frame(out, {"error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - the team's code can fail any way; the client turns it into a refusal
            write_frame(out, {"error": f"{type(e).__name__}: {str(e)[:300]}"})


def main(argv: list[str]) -> int:
    # The protocol keeps a private copy of stdout; whatever the team's code prints goes to stderr (the run's log).
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = os.fdopen(os.dup(0), "rb")
    import torch

    torch.set_num_threads(int(argv[0]) if argv else 1)
    serve(inp, out)
    # Done (quit or the caller gone): end now. An interpreter shutdown with torch loaded takes ~1 s, which every
    # model-gate run paid once per oracle, and it would run the team code's atexit hooks and finalizers: nothing
    # of theirs runs after the last answer.
    out.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
