"""Untrusted JSON, parsed in one careful place: manifests, approval statements, registry pointers and records, ledger
lines, the trainer's metadata.

Security rules:
* Only JSON that means one thing to every reader is accepted. Refused: invalid UTF-8, a key given twice (two
  readers may take different values), NaN and Infinity (not JSON; compare false with every threshold), numbers too
  large to mean anything (more than 40 digits, or a float that overflows to infinity), lone surrogates (a string no
  encoder can write back, so hashing or logging it would crash), and nesting deeper than :data:`MAX_DEPTH`.
* A refusal is :class:`~airlock.errors.UntrustedInputError`, an Airlock error (exit 1, one line naming what was
  read): never a ``RecursionError``, ``UnicodeEncodeError``, ``OverflowError`` or ``TypeError`` from deep inside.
* Shapes are the caller's to check (each reader checks its fields' types before use), so that no reader meets
  ``AttributeError`` on a list where an object was expected; the fuzz tests hold them to it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from airlock.errors import UntrustedInputError

MAX_DEPTH = 64
MAX_INT_DIGITS = 40
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _Refused(Exception):
    pass


def _constant(name: str) -> Any:
    raise _Refused(f"holds {name}, which is not a JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"holds the key {k[:40]!r} twice")
        out[k] = v
    return out


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused("holds a number too large to mean anything")
    return int(text)


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Refused("holds a number too large to mean anything")
    return v


def loads(
    data: bytes | str, what: str, hint: str = "restore it from a trusted copy", max_depth: int = MAX_DEPTH
) -> Any:
    """Parse ``data`` (what it is, e.g. ``"manifest /x/train.json"``, names it in a refusal)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise UntrustedInputError(f"{what} is not valid UTF-8", hint) from None
    elif isinstance(data, str):
        text = data
        try:
            text.encode("utf-8")  # raw surrogates (text decoded with surrogateescape, or an API's input)
        except UnicodeEncodeError:
            raise UntrustedInputError(f"{what} is not valid UTF-8 text", hint) from None
    else:
        raise UntrustedInputError(f"{what} is not text", hint)
    try:
        obj = json.loads(text, parse_constant=_constant, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float)
    except _Refused as e:
        raise UntrustedInputError(f"{what} {e}", hint) from None
    except RecursionError:
        raise UntrustedInputError(f"{what} is nested too deeply", hint) from None
    except ValueError as e:  # json.JSONDecodeError, and int()'s own digit limit
        where = f" ({e.msg} at line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise UntrustedInputError(f"{what} is not JSON{where}", hint) from None
    _depth(obj, what, hint, max_depth)
    # Lone surrogates can only come from \uD800-\uDFFF escapes: check the strings when the text has one.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise UntrustedInputError(
                f"{what} holds a lone surrogate (\\ud800-\\udfff), which is no character", hint
            ) from None
    return obj


def _depth(obj: Any, what: str, hint: str, max_depth: int) -> None:
    stack = [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if d > max_depth:
            raise UntrustedInputError(f"{what} is nested deeper than {max_depth} levels", hint)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node if isinstance(v, (dict, list)))
