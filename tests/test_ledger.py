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


# -- a signed ledger: a correctly chained entry that Airlock did not write ------------------------------------------


def _forge_chained(path, kind="registry.promote", data=None):
    """What a process that can write the file, but not read the ledger key, can do: a perfect next link."""
    from airlock.ledger import _entry_hash, canonical

    last = json.loads(path.read_text().splitlines()[-1])
    entry = {
        "seq": last["seq"] + 1,
        "time": last["time"],
        "kind": kind,
        "run_id": "r1",
        "data": data or {"digest": "sha256:" + "e" * 64},
        "prev": last["hash"],
    }
    entry["hash"] = _entry_hash(entry)
    with open(path, "ab") as f:
        f.write(canonical(entry) + b"\n")
    return entry


@pytest.fixture
def signed(tmp_path):
    from airlock.ledger import generate_key

    generate_key(tmp_path / "keys" / "ledger.key", tmp_path / "ledger.pub")
    lg = Ledger(tmp_path / "ledger.jsonl", tmp_path / "keys" / "ledger.key", tmp_path / "ledger.pub")
    for i in range(3):
        lg.append("gate.verdict", {"gate": f"g{i}", "verdict": "pass"}, run_id="r1")
    return lg


def test_a_correctly_chained_forged_entry_is_refused_by_seq_in_a_signed_ledger(signed, tmp_path):
    assert signed.verify()[0] == 3 and (tmp_path / "keys" / "ledger.key").stat().st_mode & 0o777 == 0o600
    forged = _forge_chained(signed.path)
    # The hash chain alone accepts it: that is the attack.
    assert Ledger(signed.path).verify()[0] == 4
    with pytest.raises(LedgerError, match=rf"seq {forged['seq']}, 'registry.promote'\) carries no signature"):
        Ledger(signed.path, public_key=tmp_path / "ledger.pub").verify()
    res = run_cli("ledger", "verify", "--path", str(signed.path), "--public-key", str(tmp_path / "ledger.pub"))
    assert_one_line_refusal(res, 1, "seq 3", "Airlock did not write it")


def test_an_entry_signed_with_another_key_or_a_copied_signature_is_refused(signed, tmp_path):
    from airlock.ledger import generate_key

    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    # Another key cannot append to this ledger at all...
    with pytest.raises(LedgerError, match="is not the one ledger.public_key trusts"):
        Ledger(signed.path, tmp_path / "other.key", tmp_path / "ledger.pub").append("x", {})
    # ...and entries it signs, or a genuine signature copied onto a forged entry, do not verify.
    Ledger(signed.path, tmp_path / "other.key", tmp_path / "other.pub").append("registry.promote", {"d": 1})
    with pytest.raises(LedgerError, match=r"seq 3, 'registry.promote'\) has a signature that is not the ledger key's"):
        signed.verify()
    ls = signed.path.read_text().splitlines(keepends=True)
    signed.path.write_text("".join(ls[:3]))
    genuine = json.loads(ls[2])["sig"]
    forged = _forge_chained(signed.path)
    text = signed.path.read_text().splitlines(keepends=True)
    text[-1] = json.dumps({**forged, "sig": genuine}, sort_keys=True, separators=(",", ":")) + "\n"
    signed.path.write_text("".join(text))
    with pytest.raises(LedgerError, match=r"seq 3, .* has a signature that is not the ledger key's"):
        signed.verify()


def test_a_process_without_the_ledger_key_cannot_append_to_a_signed_ledger(signed, tmp_path):
    before = signed.path.read_bytes()
    with pytest.raises(LedgerError, match="is signed and this process has no ledger key"):
        Ledger(signed.path, public_key=tmp_path / "ledger.pub").append("data.ingest", {"batch": "b9"})
    assert signed.path.read_bytes() == before


def test_a_torn_last_line_is_set_aside_and_recorded_by_the_next_append(signed, tmp_path):
    """A crash mid-write leaves half a line: readers ignore it, the next append moves it aside and records that."""
    with open(signed.path, "ab") as f:
        f.write(b'{"seq":3,"time":"2026-12-02T00:00:00.000+00:00","kind":"registry.pro')
    assert signed.verify()[0] == 3 and signed.torn_bytes() == 68
    ok = run_cli("ledger", "verify", "--path", str(signed.path), "--public-key", str(tmp_path / "ledger.pub"))
    assert ok.returncode == 0 and "incomplete" in ok.stderr, ok.stderr
    entry = signed.append("registry.promote", {"digest": "sha256:" + "a" * 64}, run_id="r1")
    entries = list(signed.entries())
    assert [e["kind"] for e in entries[-2:]] == ["ledger.recovered", "registry.promote"] and entry["seq"] == 4
    recovered = entries[-2]["data"]
    aside = tmp_path / recovered["moved_to"]
    assert aside.read_bytes().startswith(b'{"seq":3') and recovered["torn_bytes"] == 68
    assert signed.verify()[0] == 5 and signed.torn_bytes() == 0


def test_a_full_disk_mid_append_leaves_the_log_whole_and_says_so_in_one_line(tmp_path):
    """A real full file system: a small tmpfs would need root mounts; RLIMIT_FSIZE cuts writes the same way."""
    import resource
    import signal

    lg = Ledger(tmp_path / "ledger.jsonl")
    lg.append("x", {"n": 0})
    size = lg.path.stat().st_size
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, old[1]))
        with pytest.raises(LedgerError, match="could not write to the ledger .*File too large") as e:
            lg.append("y", {"n": "z" * 500})
        assert "nothing was recorded" in e.value.one_line()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert lg.path.stat().st_size == size and lg.torn_bytes() == 0
    assert [e["kind"] for e in lg.entries()] == ["x"]
    lg.append("y", {"n": 1})
    assert lg.verify()[0] == 2


# -- checkpoints published outside the ledger (a git ref): a cut tail or a rewritten chain ---------------------------


@pytest.fixture
def published(signed, tmp_path):
    import subprocess

    repo = tmp_path / "trust-repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    from airlock import checkpoints

    cp = checkpoints.publish(signed, repo)
    assert cp["seq"] == 2 and cp["entries"] == 3
    signed.append("run.promoted", {"digest": "sha256:" + "a" * 64}, run_id="r1")
    checkpoints.publish(signed, repo)
    return repo


def test_a_ledger_cut_below_a_published_checkpoint_is_refused(signed, published, tmp_path):
    from airlock import checkpoints

    assert checkpoints.check(signed, published) == 2
    ls = signed.path.read_text().splitlines(keepends=True)
    signed.path.write_text("".join(ls[:3]))  # the last entry (a promotion) removed: the chain itself stays valid
    assert signed.verify()[0] == 3
    with pytest.raises(LedgerError, match=r"ends before seq 3, which the checkpoint of .* saw: its tail was cut off"):
        checkpoints.check(signed, published)
    res = run_cli(
        "ledger", "verify", "--path", str(signed.path), "--public-key", str(tmp_path / "ledger.pub"),
        "--checkpoints", str(published),
    )  # fmt: skip
    assert_one_line_refusal(res, 1, "its tail was cut off")


def test_a_chain_rewritten_and_re_signed_with_the_key_is_caught_by_the_checkpoints(signed, published, tmp_path):
    """Even someone holding the ledger key cannot quietly rebuild the history: the published checkpoints disagree."""
    from airlock import checkpoints

    entries = list(signed.entries())
    signed.path.write_text("")
    for e in entries:  # the same kinds, re-chained and re-signed, with one verdict changed
        data = dict(e["data"], verdict="fail") if e["seq"] == 1 else e["data"]
        signed.append(e["kind"], data, run_id=e["run_id"])
    assert signed.verify()[0] == 4  # a perfect signed chain on its own
    with pytest.raises(LedgerError, match=r"entry seq 2 is not the one the checkpoint .* saw: the chain was rewritten"):
        checkpoints.check(signed, published)


def test_a_checkpoint_not_signed_by_the_ledger_key_is_refused(signed, published, tmp_path):
    from airlock import checkpoints
    from airlock.ledger import generate_key

    generate_key(tmp_path / "mallory.key", tmp_path / "mallory.pub")
    mallory = Ledger(signed.path, tmp_path / "mallory.key", tmp_path / "mallory.pub")
    # Mallory's checkpoint on top of the real ones (she can write the repository, not use the ledger key).
    with pytest.raises(LedgerError, match="is not signed by the ledger key"):
        checkpoints.publish(mallory, published)
    # A whole checkpoint ref written by Mallory for her own ledger: this ledger's key did not sign it.
    import subprocess

    forged = tmp_path / "forged-repo"
    subprocess.run(["git", "init", "-q", str(forged)], check=True)
    hers = Ledger(tmp_path / "hers.jsonl", tmp_path / "mallory.key", tmp_path / "mallory.pub")
    hers.append("x", {})
    checkpoints.publish(hers, forged)
    with pytest.raises(LedgerError, match="is not signed by the ledger key"):
        checkpoints.check(signed, forged)
