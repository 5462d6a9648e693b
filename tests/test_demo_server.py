"""The demo's own Prefect server: one database migrated once per Prefect version, then copied into each new home."""

from __future__ import annotations

import json
import sqlite3
import urllib.request

import pytest

from flows import _server


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_prepare_migrates_once_and_a_new_home_starts_from_the_copy(cache, tmp_path):
    template = _server.prepare()
    assert template == _server.template_path() and template.is_relative_to(cache)
    with sqlite3.connect(template) as db:  # a migrated schema: Prefect's tables and alembic's head
        tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
        (head,) = db.execute("select version_num from alembic_version").fetchone()
    assert {"flow_run", "flow", "artifact", "block_type"} <= tables and head
    server = _server.Server(tmp_path / "home").start()
    try:
        url = server.wait()
        assert server.seeded  # copied from the template: no migration from scratch
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            assert json.load(r) is True
    finally:
        server.stop()
    assert server.proc is None


def test_a_server_that_cannot_start_is_a_one_line_refusal(cache, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "prefect.db").write_text("not a database")  # Prefect cannot migrate this file
    server = _server.Server(tmp_path / "home").start()
    try:
        with pytest.raises(_server.DemoError) as e:
            server.wait(timeout=120)
    finally:
        server.stop()
    assert "exited with code" in str(e.value) or "did not answer" in str(e.value)
    assert "server.log" in e.value.one_line()
