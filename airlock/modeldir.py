"""The signed model directory: what it may hold, built by Airlock alone.

Security rules:
* Only Airlock writes it. It is created new after training (:func:`assemble`), never reused: nothing that existed
  before (a file planted by earlier code, a leftover of another run) is carried into it. From the trainer's output it
  takes exactly the weights and the metadata, as regular files read without following links.
* It holds only what :data:`LAYOUT` allows: the trainer's two files, Airlock's provenance and AIBOM, and flat gate
  evidence (JSON reports, PNG plots). :func:`unexpected` lists anything else anywhere in it; the flow refuses to sign
  such a directory and the registry refuses to hold one (a smuggled file would be signed and shipped).
* A registry object holds only the directory, its signature, its signed attestations and (production) the
  approvals: :data:`OBJECT`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from airlock.errors import ModelDirError

WEIGHTS, METADATA = "model.safetensors", "training.json"
TRAINER_FILES = (WEIGHTS, METADATA)
AIRLOCK_FILES = ("provenance.json", "aibom.cdx.json")
EVIDENCE = "evidence"
_EVIDENCE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.(json|png)$")
OBJECT = {
    "model": "dir",
    "model.sig": "file",
    "attestations": "dir",  # signed in-toto statements about the model (airlock/attest.py)
    "attestations.sig": "file",
    "approvals.json": "file",
}


def evidence_name(gate: str) -> str:
    """The name a gate's report has (``evidence/<name>.json``, and its Prefect artifact key): ``data:train`` ->
    ``data-train``."""
    return re.sub(r"[^a-z0-9-]+", "-", gate.lower()).strip("-")[:60] or "report"


def unexpected(model_dir: Path) -> list[str]:
    """Every entry of ``model_dir`` the layout does not allow (by relative path), links and special files included."""
    bad: list[str] = []
    for entry in sorted(os.scandir(model_dir), key=lambda e: e.name):
        mode = os.lstat(entry.path).st_mode
        if entry.name == EVIDENCE and stat.S_ISDIR(mode):
            for ev in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if not (_EVIDENCE_NAME.match(ev.name) and stat.S_ISREG(os.lstat(ev.path).st_mode)):
                    bad.append(f"{EVIDENCE}/{ev.name}")
        elif entry.name not in (*TRAINER_FILES, *AIRLOCK_FILES) or not stat.S_ISREG(mode):
            bad.append(entry.name)
    return bad


def unexpected_in_object(obj: Path) -> list[str]:
    """Entries of a registry object outside :data:`OBJECT`, and anything unexpected in its model directory."""
    bad = []
    for entry in sorted(os.scandir(obj), key=lambda e: e.name):
        mode = os.lstat(entry.path).st_mode
        kind = OBJECT.get(entry.name)
        if kind is None or (kind == "dir") != stat.S_ISDIR(mode) or (kind == "file" and not stat.S_ISREG(mode)):
            bad.append(entry.name)
    if (obj / "model").is_dir() and not (obj / "model").is_symlink():
        bad += [f"model/{n}" for n in unexpected(obj / "model")]
    return bad


def _copy_regular(src: Path, dest: Path) -> None:
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:  # ELOOP: a link (to a key, to /etc/passwd...) is never followed
        raise ModelDirError(
            f"the trainer's {src.name} is not a regular file ({e.strerror})",
            "the trainer must write plain files, no links",
        ) from None
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise ModelDirError(f"the trainer's {src.name} is not a regular file", "the trainer must write plain files")
        with open(dest, "xb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)


def assemble(trainer_out: Path, dest: Path) -> Path:
    """A new model directory holding exactly the trainer's weights and metadata (the artifact gate judges it)."""
    if dest.exists() or dest.is_symlink():
        raise ModelDirError(f"{dest} already exists", "start a new run: a model directory is never reused")
    dest.mkdir(parents=True)
    for name in TRAINER_FILES:
        if (trainer_out / name).exists() or (trainer_out / name).is_symlink():
            _copy_regular(trainer_out / name, dest / name)
    return dest


def add_evidence(model_dir: Path, files: list[Path]) -> None:
    """Airlock's own gate reports and plots, copied flat into ``evidence/``."""
    ev = model_dir / EVIDENCE
    ev.mkdir(exist_ok=True)
    for f in files:
        if not _EVIDENCE_NAME.match(f.name):
            raise ModelDirError(f"evidence file name {f.name!r} is not allowed", "an Airlock bug: report it")
        _copy_regular(f, ev / f.name)
