"""Ledger: an edited, removed, reordered or truncated entry is detected; the CLI says so in one line."""

from __future__ import annotations

import json

import pytest

from airlock.errors import LedgerError
from airlock.ledger import Anchor, Ledger
from tests.conftest import assert_one_line_refusal, run_cli


@pytest.fixture
def ledger(tmp_path):
    lg = Ledger(tmp_path / "ledger.jsonl")
    for i in range(5):
        lg.append("gate.verdict", {"gate": f"g{i}", "verdict": "pass"}, run_id="r1")
    return lg


def lines(lg):
    return lg.path.read_text().splitlines(keepends=True)


def test_intact_chain_verifies(ledger):
    count, head = ledger.verify()
    assert count == 5 and len(head) == 64


def test_edited_entry_is_detected(ledger):
    ls = lines(ledger)
    e = json.loads(ls[2])
    e["data"]["verdict"] = "fail"
    ls[2] = json.dumps(e) + "\n"
    ledger.path.write_text("".join(ls))
    with pytest.raises(LedgerError, match="line 3 .* was edited"):
        ledger.verify()


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(ledger):
    from airlock.ledger import _entry_hash, canonical

    ls = lines(ledger)
    e = json.loads(ls[2])
    e["data"]["verdict"] = "fail"
    e["hash"] = _entry_hash(e)
    ls[2] = canonical(e).decode() + "\n"
    ledger.path.write_text("".join(ls))
    with pytest.raises(LedgerError, match="line 4 .*removed, inserted or reordered"):
        ledger.verify()


def test_removed_entry_is_detected(ledger):
    ls = lines(ledger)
    del ls[1]
    ledger.path.write_text("".join(ls))
    with pytest.raises(LedgerError, match="removed, inserted or reordered"):
        ledger.verify()


def test_reordered_entries_are_detected(ledger):
    ls = lines(ledger)
    ls[1], ls[2] = ls[2], ls[1]
    ledger.path.write_text("".join(ls))
    with pytest.raises(LedgerError, match="removed, inserted or reordered"):
        ledger.verify()


def test_truncated_tail_is_detected_against_an_anchor(ledger):
    anchor = ledger.head()
    ls = lines(ledger)
    ledger.path.write_text("".join(ls[:-1]))
    ledger.verify()  # the chain alone is still valid...
    with pytest.raises(LedgerError, match="truncated"):
        ledger.verify([anchor])  # ...the anchor kept elsewhere catches it
    assert anchor == Anchor(4, json.loads(ls[-1])["hash"])


def test_cli_ledger_verify(ledger):
    ok = run_cli("ledger", "verify", "--path", str(ledger.path))
    assert ok.returncode == 0 and "5 entries, chain intact" in ok.stdout
    ls = lines(ledger)
    ledger.path.write_text("".join(ls[:1] + ls[2:]))
    bad = run_cli("ledger", "verify", "--path", str(ledger.path))
    assert_one_line_refusal(bad, 1, "removed, inserted or reordered")


def test_cli_ledger_verify_missing_file(tmp_path):
    res = run_cli("ledger", "verify", "--path", str(tmp_path / "none.jsonl"))
    assert_one_line_refusal(res, 1, "no ledger at")


def test_concurrent_appends_keep_the_chain(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "l.jsonl"
    procs = [mp.get_context("fork").Process(target=_append_many, args=(path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    count, _ = Ledger(path).verify()
    assert count == 4 * 25


def _append_many(path, i):
    lg = Ledger(path)
    for j in range(25):
        lg.append("x", {"proc": i, "j": j})
