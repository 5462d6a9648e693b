"""Statistics of a dataset's splits, streamed from the ``.npy`` files with constant memory.

A split is a pair ``<split>_x.npy`` / ``<split>_y.npy`` at the top of a dataset directory (the format of
:mod:`airlock.datasets`). For each split::

    {"x": {"file": "train_x.npy", "shape": [N, 1, 8, 8], "dtype": "float32", "min": 0.0, "max": 1.0, "nonfinite": 0},
     "y": {"file": "train_y.npy", "shape": [N], "dtype": "int64", "labels": {"0": 120, "1": 118, ...}}}

Computed at ingest (recorded in the manifest, so the next version's label distribution can be compared with this
one) and recomputed by the data gate from the verified snapshot. Files are parsed as ``.npy`` headers plus raw data
read in 8 MiB chunks: no pickle is ever loaded (object arrays are refused) and memory does not grow with the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from airlock.errors import DataError

CHUNK = 8 << 20


def splits(directory: str | Path) -> list[str]:
    """Splits present in a dataset directory: names with both ``<split>_x.npy`` and ``<split>_y.npy``."""
    d = Path(directory)
    names = {p.name[: -len("_x.npy")] for p in d.glob("*_x.npy")}
    return sorted(n for n in names if (d / f"{n}_y.npy").is_file())


def dataset_stats(directory: str | Path, overrides: dict[str, Path] | None = None) -> dict[str, dict]:
    """Stats of every split. ``overrides`` maps a file name to where its content is now (a batch being ingested)."""
    d = Path(directory)
    overrides = overrides or {}
    names = set(splits(d)) | {n[: -len("_x.npy")] for n in overrides if n.endswith("_x.npy") and "/" not in n}
    out = {}
    for s in sorted(names):
        xn, yn = f"{s}_x.npy", f"{s}_y.npy"
        if (yn in overrides or (d / yn).is_file()) and (xn in overrides or (d / xn).is_file()):
            out[s] = split_stats(d, s, files={n: overrides[n] for n in (xn, yn) if n in overrides})
    return out


def split_stats(
    directory: str | Path,
    split: str,
    bounds: tuple[float | None, float | None] = (None, None),
    files: dict[str, Path] | None = None,
) -> dict:
    """Stats of one split. With ``bounds`` (x_min, x_max), also count the x values outside them."""
    d = Path(directory)
    files = files or {}
    xn, yn = f"{split}_x.npy", f"{split}_y.npy"
    x = _scan(files.get(xn, d / xn), xn, labels=False, bounds=bounds)
    y = _scan(files.get(yn, d / yn), yn, labels=True)
    return {"x": x, "y": y}


def _header(f, name: str) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:
        raise DataError(f"{name} is not a readable .npy file: {e}", "re-export it with numpy.save") from None
    if dtype.hasobject:
        # A pickled object array executes code when loaded: never accepted as data.
        raise DataError(
            f"{name} holds Python objects (pickle)", "store numeric arrays only (numpy.save, allow_pickle=False)"
        )
    return tuple(int(n) for n in shape), dtype


def _scan(path: Path, name: str, labels: bool, bounds: tuple[float | None, float | None] = (None, None)) -> dict:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read {name}: {e.strerror}", "check the dataset against its manifest") from None
    with f:
        shape, dtype = _header(f, name)
        out: dict = {"file": name, "shape": list(shape), "dtype": dtype.name}
        total = math.prod(shape)
        itemsize = max(1, dtype.itemsize)
        per_chunk = max(1, CHUNK // itemsize)
        buf = bytearray(per_chunk * itemsize)
        counts: dict = {}
        lo = hi = None
        nonfinite = below = above = 0
        x_min, x_max = bounds
        numeric = dtype.kind in "biuf"
        done = 0
        while done < total:
            want = min(per_chunk, total - done) * itemsize
            n = f.readinto(memoryview(buf)[:want])
            if n != want:
                raise DataError(
                    f"{name} is truncated: {done * itemsize + n} of {total * itemsize} data bytes",
                    "re-export it with numpy.save",
                )
            a = np.frombuffer(buf, dtype=dtype, count=want // itemsize)
            done += len(a)
            if labels:
                if dtype.kind in "biu":
                    vals, cnt = np.unique(a, return_counts=True)
                    for v, c in zip(vals.tolist(), cnt.tolist()):
                        counts[v] = counts.get(v, 0) + c
                continue
            if not numeric:
                continue
            if dtype.kind == "f":
                finite = np.isfinite(a)
                bad = int(a.size - np.count_nonzero(finite))
                if bad:
                    nonfinite += bad
                    a = a[finite]
            if a.size:
                cmin, cmax = a.min().item(), a.max().item()
                lo = cmin if lo is None else min(lo, cmin)
                hi = cmax if hi is None else max(hi, cmax)
                if x_min is not None:
                    below += int(np.count_nonzero(a < x_min))
                if x_max is not None:
                    above += int(np.count_nonzero(a > x_max))
        if labels:
            # Labels are counted for integer arrays only; anything else has no label set (validation refuses it).
            out["labels"] = {str(k): v for k, v in sorted(counts.items())} if dtype.kind in "biu" else None
        else:
            out.update(min=_num(lo), max=_num(hi), nonfinite=nonfinite)
            if x_min is not None:
                out["below_min"] = below
            if x_max is not None:
                out["above_max"] = above
        return out


def _num(v):
    if v is None:
        return None
    return float(v) if isinstance(v, float) else int(v)


def label_shift(new: dict[str, int], old: dict[str, int]) -> tuple[float, list[tuple[str, float, float]]]:
    """Total-variation distance between two label-count maps, and the labels by how much their share moved."""
    n_new, n_old = sum(new.values()), sum(old.values())
    if n_new == 0 or n_old == 0:
        return (0.0 if n_new == n_old else 1.0), []
    rows = []
    for k in set(new) | set(old):
        p, q = new.get(k, 0) / n_new, old.get(k, 0) / n_old
        rows.append((k, q, p))
    tv = 0.5 * sum(abs(p - q) for _, q, p in rows)
    rows.sort(key=lambda r: (-abs(r[2] - r[1]), _label_key(r[0])))
    return tv, rows


def _label_key(k: str):
    try:
        return (0, int(k), "")
    except ValueError:
        return (1, 0, k)
