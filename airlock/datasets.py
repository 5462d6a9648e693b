"""Dataset files: the example's on-disk format, and the demo data made from scikit-learn's bundled digits.

A dataset directory holds ``<split>_x.npy`` (float32, shape (N, C, H, W), values in [0, 1]) and ``<split>_y.npy``
(integer labels). Files are read with ``allow_pickle=False``: a dataset can never execute code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from airlock.errors import DataError


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xp, yp = Path(directory) / f"{split}_x.npy", Path(directory) / f"{split}_y.npy"
    try:
        x = np.load(xp, allow_pickle=False)
        y = np.load(yp, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read split '{split}' in {directory}: {e}", "check the dataset against its manifest"
        ) from e
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(
            f"split '{split}' in {directory} has shapes {x.shape} and {y.shape}",
            "expected x (N, C, H, W) and y (N,) with the same N > 0",
        )
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def write_digits(
    train_dir: str | Path, golden_dir: str | Path, seed: int = 0, golden_size: int = 300, test_size: int = 360
) -> None:
    """Split sklearn's 1,797 digits into train / test (one dataset) and a separate known-clean golden set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_rest, x_gold, y_rest, y_gold = train_test_split(x, y, test_size=golden_size, stratify=y, random_state=seed)
    x_tr, x_te, y_tr, y_te = train_test_split(x_rest, y_rest, test_size=test_size, stratify=y_rest, random_state=seed)
    for directory, parts in (
        (Path(train_dir), {"train": (x_tr, y_tr), "test": (x_te, y_te)}),
        (Path(golden_dir), {"golden": (x_gold, y_gold)}),
    ):
        directory.mkdir(parents=True, exist_ok=True)
        for split, (xs, ys) in parts.items():
            np.save(directory / f"{split}_x.npy", xs, allow_pickle=False)
            np.save(directory / f"{split}_y.npy", ys, allow_pickle=False)
