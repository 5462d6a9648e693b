"""The input contract: what a request may hold, from the signed ``training.json`` of the model being served.

Security rules:
* Nothing reaches the model before it is parsed here: a body over the size limit, JSON that is not Airlock's safe
  subset (airlock/untrusted.py: no NaN, no deep nesting), a wrong shape, a non-numeric or non-finite value, or a value
  outside the model's declared input range (``clip_values``) is answered 4xx with one line saying what is wrong.
* The contract is read from the verified model (its metadata is signed with it), never from the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from airlock import untrusted
from airlock.errors import AirlockError


class Rejected(Exception):
    """A request refused before the model: an HTTP status and one line."""

    def __init__(self, status: int, code: str, reason: str, headers: dict | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.headers = status, code, reason, headers or {}


@dataclass(frozen=True)
class InputContract:
    shape: tuple[int, ...]  # one sample
    low: float
    high: float
    nb_classes: int
    max_batch: int
    max_body_bytes: int

    @classmethod
    def from_metadata(cls, meta: dict, max_batch: int, max_body_bytes: int) -> InputContract:
        shape = tuple(int(d) for d in meta["input_shape"])
        low, high = (float(v) for v in meta.get("clip_values") or (0.0, 1.0))
        return cls(shape, low, high, int(meta["nb_classes"]), max_batch, max_body_bytes)

    def describe(self) -> dict:
        return {
            "input_shape": list(self.shape),
            "dtype": "float32",
            "range": [self.low, self.high],
            "max_batch": self.max_batch,
            "nb_classes": self.nb_classes,
        }

    def parse(self, body: bytes) -> np.ndarray:
        """``{"inputs": [sample, ...]}`` -> float32 array (n, *shape). Raises :class:`Rejected`."""
        if len(body) > self.max_body_bytes:
            raise Rejected(413, "input.too_large", f"the request body is over {self.max_body_bytes} bytes")
        try:
            doc = untrusted.loads(body, "the request body", 'send JSON: {"inputs": [...]}')
        except AirlockError as e:
            raise Rejected(400, "input.unreadable", e.what) from None
        if not isinstance(doc, dict) or set(doc) != {"inputs"} or not isinstance(doc["inputs"], list):
            raise Rejected(400, "input.schema", 'the body must be exactly {"inputs": [sample, ...]}')
        n = len(doc["inputs"])
        if not 1 <= n <= self.max_batch:
            raise Rejected(400, "input.batch", f"send 1 to {self.max_batch} samples, not {n}")
        try:
            x = np.asarray(doc["inputs"])
        except ValueError:
            x = None
        if x is None or x.dtype.kind not in "if" or x.shape != (n, *self.shape):
            got = "ragged or non-numeric" if x is None or x.dtype.kind not in "if" else f"shape {list(x.shape)}"
            raise Rejected(422, "input.shape", f"expected samples of shape {list(self.shape)} (numbers), got {got}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise Rejected(422, "input.non_finite", "inputs must be finite numbers")
        if x.min() < self.low or x.max() > self.high:
            raise Rejected(422, "input.range", f"inputs must lie in [{self.low}, {self.high}], the model's input range")
        return x
