"""Reading manifests: files, directories, ``-``, multi-document YAML and ``kind: List`` wrappers; fail closed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from airlock.errors import AuditInputError
from audit.k8s._model import Obj, as_list

_MAX_BYTES = 256 * 1024 * 1024


_SUFFIXES = (".yaml", ".yml", ".json")


def _files(paths: list[str]) -> list[tuple[str, bool]]:
    """(file, given_explicitly) for every path; directories are searched for YAML/JSON files."""
    out: list[tuple[str, bool]] = []
    for p in paths:
        if p == "-":
            out.append(("-", True))
            continue
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
            if not found:
                raise AuditInputError(
                    f"{p}: no .yaml, .yml or .json files in this directory; "
                    "pass manifest files or the output of `kubectl get ... -o yaml`"
                )
            out.extend((str(f), False) for f in found)
        elif path.is_file():
            out.append((str(path), True))
        else:
            raise AuditInputError(
                f"{p}: no such file or directory; pass manifest files or `kubectl get -o yaml` output"
            )
    return out


def _read(file: str) -> str:
    try:
        if file == "-":
            text = sys.stdin.read(_MAX_BYTES + 1)
        else:
            with open(file, "rb") as fh:
                raw = fh.read(_MAX_BYTES + 1)
            text = raw.decode("utf-8")
    except OSError as e:
        raise AuditInputError(
            f"{file}: cannot read it ({e.strerror or e}); check the path and its permissions"
        ) from None
    except UnicodeDecodeError:
        raise AuditInputError(f"{file}: not UTF-8 text; pass YAML or JSON manifests") from None
    if len(text) > _MAX_BYTES:
        raise AuditInputError(f"{file}: larger than {_MAX_BYTES // (1024 * 1024)} MiB; audit it in smaller parts")
    return text


def _flatten(doc: Any, depth: int = 0) -> Iterator[dict]:
    """Objects of a document, unwrapping `kind: List` (kubectl get -o yaml) and typed lists (PodList...).
    Lists nest at most a few levels deep: a self-referencing YAML alias cannot recurse forever."""
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return
    if doc["kind"] == "List" or (doc["kind"].endswith("List") and isinstance(doc.get("items"), list)):
        if depth < 3:
            for item in as_list(doc.get("items")):
                yield from _flatten(item, depth + 1)
        return
    yield doc


def load_objects(paths: list[str]) -> list[Obj]:
    """Every Kubernetes object in `paths`. Raises AuditInputError (one line) on anything that cannot be audited."""
    if not paths:
        raise AuditInputError(
            "no input: pass manifest files, directories, or `-` for `kubectl get ... -o yaml` on stdin"
        )
    objs: list[Obj] = []
    for file, explicit in _files(paths):
        text = _read(file)
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise AuditInputError(
                f"{file}: not valid YAML{where} ({problem}); fix the syntax or pass `kubectl get ... -o yaml` output"
            ) from None
        found = [Obj(d, file) for doc in docs for d in _flatten(doc)]
        if explicit and not found:
            raise AuditInputError(
                f"{file}: holds no Kubernetes objects (no document with apiVersion/kind); "
                "pass manifests or `kubectl get ... -o yaml` output"
            )
        objs.extend(found)
    if not objs:
        raise AuditInputError(
            f"no Kubernetes objects in {', '.join(paths)}; pass manifests or `kubectl get ... -o yaml` output"
        )
    return objs
