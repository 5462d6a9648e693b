"""File names in digests: the root digest's encoding decodes one way only, so two file lists never share a digest.

The root digest hashes sorted lines ``<sha256> <size> <path>\\n``. A file named ``"x\\n<sha> 7 y"`` used to digest
like the two files ``x`` and ``y`` (a manifest, or a model directory, swapped for another with the same identity).
Every name is now refused wherever a digest is computed unless it is canonical (airlock/hashing.py); the encoding
of old, canonical manifests is unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock import hashing, manifest
from airlock.errors import AirlockError, UnsafeNameError

D1, D2 = "a" * 64, "b" * 64


def decode(files: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """Parse the digest's own text back: possible exactly when the encoding is unambiguous."""
    text = "".join(f"{d} {s} {p}\n" for p, (d, s) in sorted(files.items()))
    out = {}
    for line in text.split("\n")[:-1]:
        d, s, p = line.split(" ", 2)
        out[p] = (d, int(s))
    return out


def test_the_reported_collision_is_refused():
    import hashlib

    two = {"x": (D1, 1), "y": (D2, 7)}
    forged = {f"x\n{D2} 7 y": (D1, 1)}  # one file whose name spells a second line
    raw = lambda files: hashlib.sha256(
        "".join(f"{d} {s} {p}\n" for p, (d, s) in sorted(files.items())).encode()  # noqa: E731
    ).hexdigest()
    assert raw(two) == raw(forged)  # the collision, in the encoding as it is
    assert hashing.root_digest(two) == "sha256:" + raw(two)  # canonical lists keep their digests
    with pytest.raises(UnsafeNameError, match="line break"):
        hashing.root_digest(forged)


@pytest.mark.parametrize(
    "name, why",
    [
        ("a//b", "component"),
        ("./a", "component"),
        ("a/./b", "component"),
        ("a/", "component"),
        ("/etc/passwd", "component"),
        ("a/..", "component"),
        ("", "empty"),
        ("e\u0301.npy", "normal form"),
        ("a\x00b", "control"),
        ("a\rb", "control"),
        ("a\u2028b", "control"),
        ("\udcff.npy", "UTF-8"),
    ],
)
def test_non_canonical_names_are_refused_with_the_reason(name, why):
    with pytest.raises(UnsafeNameError) as e:
        hashing.root_digest({"ok.npy": (D1, 1), name: (D2, 2)})
    assert why in e.value.one_line() and "rename it" in e.value.one_line()


segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and hashing.name_problem(s) is None)
canonical = st.lists(segment, min_size=1, max_size=4).map("/".join)
entry = st.tuples(st.sampled_from([D1, D2, "0123456789abcdef" * 4]), st.integers(0, 10**12))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(canonical, entry, min_size=1, max_size=20))
def test_accepted_file_lists_decode_back_to_themselves(files):
    hashing.root_digest(files)
    assert decode(files) == files  # injective: a different list has different text, hence another digest


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=20), entry, min_size=1, max_size=6))
def test_any_name_is_either_refused_by_airlock_or_unambiguous(files):
    try:
        hashing.root_digest(files)
    except UnsafeNameError:
        assert any(hashing.name_problem(n) for n in files)
        return
    assert all(hashing.name_problem(n) is None for n in files)
    assert decode(files) == files


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=30))
def test_a_manifest_naming_any_file_loads_or_is_refused_by_airlock(tmp_path, name):
    m = {"format": manifest.FORMAT, "dataset": "train", "files": {name: {"sha256": D1, "size": 3}}}
    try:
        m["root_digest"] = "sha256:" + "0" * 64
        m["root_digest"] = hashing.root_digest({name: (D1, 3)})
    except UnsafeNameError:
        pass
    path = tmp_path / "m.json"
    import json

    path.write_text(json.dumps(m))
    try:
        loaded = manifest.load(path)
    except AirlockError as e:
        assert e.exit_code in (1, 2) and e.one_line()
        return
    assert hashing.name_problem(name) is None and list(loaded["files"]) == [name]


def test_a_dataset_file_with_a_line_break_in_its_name_is_refused(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    (d / "train_x.npy").write_bytes(b"x")
    (d / f"evil\n{D1} 1 train_y.npy").write_bytes(b"y")
    with pytest.raises(UnsafeNameError, match="line break"):
        manifest.build(d, "train")


def test_a_model_directory_with_an_undecodable_name_is_refused(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"x")
    os.close(os.open(os.fsencode(d) + b"/\xff.bin", os.O_CREAT | os.O_WRONLY))  # invalid UTF-8 on disk
    with pytest.raises(UnsafeNameError, match="not valid UTF-8"):
        _ = hashing.hash_tree(Path(d)).root_digest


def test_the_data_gate_refuses_a_planted_file_with_a_line_break_in_its_name(tmp_path, digits):
    from gates import data

    d = tmp_path / "train"
    shutil.copytree(digits / "train", d)
    m = tmp_path / "train.json"
    manifest.write(m, manifest.build(d, "train"))
    (d / f"x\n{D1} 1 train_x.npy").write_bytes(b"planted")
    r = data.check("train", d, m)
    assert not r.passed and "cannot be recorded unambiguously" in r.reason and "line break" in r.reason
