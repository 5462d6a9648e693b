"""Artifact-format gate: what the trainer wrote is weights in safetensors and plain metadata, nothing else.

Attacks it blocks:
* code execution at load time: a pickle (``torch.save``) or a pickle renamed ``.safetensors`` carries a payload
  that runs when the model is loaded. Only safetensors, proven by parsing its header, is accepted: it never unpickles.
* smuggling: an extra file, sub-directory or symlink in the output would be signed along with the model and shipped
  to production. The output must be exactly the expected files.
* a metadata file that lies about the model's shape or classes, which the evaluation gates rely on.
"""

from __future__ import annotations

import json
from pathlib import Path

from gates._result import GateResult

GATE = "artifact"
WEIGHTS = "model.safetensors"
METADATA = "training.json"
EXPECTED = {WEIGHTS, METADATA}
MAX_METADATA_BYTES = 1 << 20


def check(output_dir: str | Path) -> GateResult:
    out = Path(output_dir)
    if not out.is_dir() or out.is_symlink():
        return GateResult.fail(
            GATE,
            f"trainer output {out} is missing — the trainer must write {sorted(EXPECTED)} there",
            code="artifact.missing",
        )
    entries = {p.name: p for p in out.iterdir()}
    evidence: dict = {"files": sorted(entries)}
    # Smuggled files, links and directories would be signed along with the model.
    odd = sorted(n for n, p in entries.items() if n not in EXPECTED or p.is_symlink() or not p.is_file())
    missing = sorted(EXPECTED - set(entries))
    if odd or missing:
        parts = ([f"unexpected: {', '.join(odd)}"] if odd else []) + (
            [f"missing: {', '.join(missing)}"] if missing else []
        )
        return GateResult.fail(
            GATE,
            f"trainer output must be exactly {sorted(EXPECTED)} — {'; '.join(parts)} — "
            "write weights with safetensors.save_file and metadata as JSON only",
            evidence=evidence,
            code="artifact.unexpected_files",
        )

    # Code execution at load: only a parseable safetensors file is accepted, never a pickle.
    try:
        from safetensors import safe_open

        # The header alone, read without torch (importing it would cost the flow seconds and add nothing here).
        with safe_open(str(entries[WEIGHTS]), framework="numpy") as f:
            keys = list(f.keys())
            tensors = {k: list(f.get_slice(k).get_shape()) for k in keys}
    except Exception as e:  # noqa: BLE001 - any parse failure is a refusal
        return GateResult.fail(
            GATE,
            f"{WEIGHTS} is not a valid safetensors file ({type(e).__name__}: {str(e)[:80]}) — "
            "save weights with safetensors, never torch.save/pickle",
            evidence=evidence,
            code="artifact.not_safetensors",
        )
    if not keys:
        return GateResult.fail(
            GATE,
            f"{WEIGHTS} holds no tensors — the trainer saved an empty state dict",
            evidence=evidence,
            code="artifact.empty_weights",
        )
    evidence["tensors"] = len(keys)
    evidence["parameters"] = int(sum(_prod(s) for s in tensors.values()))

    # Lying metadata: the evaluation gates build the model and the attacks from these fields.
    meta_path = entries[METADATA]
    if meta_path.stat().st_size > MAX_METADATA_BYTES:
        return GateResult.fail(
            GATE,
            f"{METADATA} is larger than 1 MiB — keep metadata small",
            evidence=evidence,
            code="artifact.metadata_too_large",
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        return GateResult.fail(
            GATE,
            f"{METADATA} is not JSON ({e}) — write it with json.dump",
            evidence=evidence,
            code="artifact.metadata_not_json",
        )
    problems = []
    if not isinstance(meta, dict):
        problems.append("not a JSON object")
    else:
        shape = meta.get("input_shape")
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
            problems.append("input_shape must be a list of positive integers")
        if not (isinstance(meta.get("nb_classes"), int) and meta["nb_classes"] >= 2):
            problems.append("nb_classes must be an integer >= 2")
        if not isinstance(meta.get("hyperparameters"), dict):
            problems.append("hyperparameters must be an object")
        clip = meta.get("clip_values", [0.0, 1.0])
        if not (
            isinstance(clip, list)
            and len(clip) == 2
            and all(isinstance(c, (int, float)) for c in clip)
            and clip[0] < clip[1]
        ):
            problems.append("clip_values must be [low, high]")
    if problems:
        return GateResult.fail(
            GATE,
            f"{METADATA}: {'; '.join(problems)} — see the trainer contract in training/__init__.py",
            evidence=evidence,
            code="artifact.metadata_invalid",
        )
    return GateResult.ok(
        GATE,
        f"safetensors with {len(keys)} tensors ({evidence['parameters']} parameters) and valid metadata",
        metrics={"parameters": float(evidence["parameters"])},
        evidence=evidence,
    )


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
