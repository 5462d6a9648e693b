"""Every untrusted parser, fuzzed: valid input mutated with the tokens that crashed them before (deep nesting, lone
surrogates, wrong JSON types, huge numbers, NaN, invalid UTF-8, duplicate keys). Each parse either succeeds or
refuses with Airlock's own error (one line, exit 1 or 2): never a RecursionError, UnicodeEncodeError, TypeError,
AttributeError, OverflowError or ValueError from inside.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airlock import manifest, policy, untrusted
from airlock.errors import AirlockError
from airlock.ledger import Ledger
from gates import approval, artifact

NASTY = [
    b'"\\ud800"',
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"9" * 5000,
    b"[" * 3000,
    b"{" * 200,
    b'{"a":1,"a":2}',
    b'"\xff\xfe"',
    b"null",
    b"[]",
    b"{}",
    b"true",
    b'"\\u0000"',
    b'"x\\ny"',
    b"-",
    b",",
    b":",
    b'"',
    b"\\",
    b"0x10",
    b"1.5",
    b'{"seq": true}',
    b"\x00",
]
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(0, len(data))))
        kind = draw(st.sampled_from(["insert", "replace", "flip", "cut"]))
        if kind == "insert":
            data[pos:pos] = draw(st.sampled_from(NASTY))
        elif kind == "replace":
            end = min(len(data), pos + draw(st.integers(1, 12)))
            data[pos:end] = draw(st.sampled_from(NASTY))
        elif kind == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[pos : pos + draw(st.integers(1, 20))]
    return bytes(data)


def _airlock_or_nothing(fn) -> None:
    try:
        fn()
    except AirlockError as e:
        assert e.exit_code in (1, 2) and e.one_line() and "\n" not in e.one_line()


@FUZZ
@given(data=st.data())
def test_untrusted_loads_refuses_only_with_airlocks_error(data):
    doc = data.draw(mutated(b'{"a": [1, 2.5, "x", {"b": null}], "c": true}'))
    _airlock_or_nothing(lambda: untrusted.loads(doc, "fuzz"))


def test_each_reported_crash_is_now_a_refusal():
    for doc, why in (
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": 1e999}', "too large"),
        (b"9" * 5000, "too large"),
        (b'{"a": 1, "a": 2}', "twice"),
        (b"\xff", "UTF-8"),
        (b"[" * 70 + b"]" * 70, "deeper than"),
    ):
        with pytest.raises(AirlockError) as e:
            untrusted.loads(doc, "the document")
        assert why in e.value.one_line(), (doc[:20], e.value.one_line())


@pytest.fixture(scope="module")
def seed_manifest(tmp_path_factory, digits) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "train.json"
    manifest.write(path, manifest.build(digits / "train", "train"))
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_manifest_parser(data, tmp_path, seed_manifest):
    path = tmp_path / "m.json"
    path.write_bytes(data.draw(mutated(seed_manifest)))
    _airlock_or_nothing(lambda: manifest.load(path))


@FUZZ
@given(data=st.data())
def test_approval_statement_parser(data, keys):
    stmt = approval.make_statement("run-1", "sha256:" + "a" * 64, "alice@example.com", "approve")
    text = data.draw(mutated(stmt.encode())).decode("utf-8", "surrogateescape")
    ctx = approval.Context("run-1", "sha256:" + "a" * 64, keys.approvers)
    result, verified = approval.verify_one(approval.Approval(text, "not a signature"), ctx, [])
    assert verified is None and not result.passed and result.reason


@FUZZ
@given(data=st.data())
def test_ledger_line_parser(data, tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.unlink(missing_ok=True)
    led = Ledger(path)
    led.append("run.start", {"x": 1}, run_id="r")
    led.append("gate.verdict", {"gate": "commit", "verdict": "pass"}, run_id="r")
    lines = path.read_bytes().split(b"\n")
    i = data.draw(st.integers(0, 1))
    lines[i] = data.draw(mutated(lines[i]))
    path.write_bytes(b"\n".join(lines))
    _airlock_or_nothing(lambda: led.verify())
    _airlock_or_nothing(lambda: led.append("next", {"y": 2}))


@FUZZ
@given(data=st.data())
def test_registry_pointer_and_records(data, tmp_path, keys):
    from registry import Registry

    root = tmp_path / "registry"
    shutil.rmtree(root, ignore_errors=True)
    (root / "production").mkdir(parents=True)
    (root / "staging" / "runs").mkdir(parents=True)
    pointer = json.dumps({"digest": "sha256:" + "a" * 64, "run_id": "r", "ledger_anchor": {"seq": 0, "hash": "0"}})
    (root / "production" / "CURRENT").write_bytes(data.draw(mutated(pointer.encode())))
    (root / "staging" / "runs" / "r.json").write_bytes(
        data.draw(mutated(b'{"run_id": "r", "digest": "sha256:' + b"b" * 64 + b'"}'))
    )
    reg = Registry(root, Ledger(tmp_path / "l.jsonl"), keys.model_pub, keys.approvers)
    _airlock_or_nothing(lambda: reg.current_pointer("production"))
    _airlock_or_nothing(lambda: reg.staged_for_run("r"))
    _airlock_or_nothing(lambda: reg.verify_stage("production"))


@FUZZ
@given(data=st.data())
def test_policy_parser(data, tmp_path):
    from flows import demo

    text = demo.POLICY.replace("@GOLDEN_ROOT_DIGEST@", "sha256:" + "c" * 64).encode()
    path = tmp_path / "airlock.toml"
    path.write_bytes(data.draw(mutated(text)))
    _airlock_or_nothing(lambda: policy.load(path))


@FUZZ
@given(data=st.data())
def test_safetensors_header_parser(data, tmp_path, trained):
    raw = (trained / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = data.draw(mutated(raw[8 : 8 + n]))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    shutil.copy2(trained / "training.json", out / "training.json")
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :])
    r = artifact.check(out)  # a verdict either way: never an exception
    assert r.reason
