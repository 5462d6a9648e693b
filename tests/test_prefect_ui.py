"""The Prefect UI path, in a real browser: Debian's headless chromium, driven through chromedriver by selenium, against
a real Prefect server serving its UI on 127.0.0.1 (flows/_server.py with full=True). Open the paused run, read its logs
and the Resume form (the gate verdicts and the commands, nothing cut off at the dialog's width), paste an approval
made with `airlock approve --print-only`, submit, and see the flow count it."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from airlock.ledger import Ledger
from tests._flow import approve, start_run, wait_for_pause

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ui_server(full_server):
    return full_server


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):  # fail, never skip: ./setup.sh installs both
        pytest.fail("chromium and chromedriver are not installed: run ./setup.sh (Debian: chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield b
    finally:
        b.quit()


def _wait(what, fn, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = fn()
        except Exception:  # noqa: BLE001 - the page is still rendering: try again until the deadline
            got = None
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"the UI never showed {what}")


def _button(browser, label: str):
    from selenium.webdriver.common.by import By

    return next((b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == label), None)


def test_resume_form_in_a_browser_counts_a_pasted_approval(work, ui_server, browser):
    from selenium.webdriver.common.by import By

    proc = start_run(work, ui_server)
    try:
        run_id = wait_for_pause(work, proc)
        digest = next(e for e in Ledger(work["ledger"]).entries() if e["kind"] == "approval.requested")["data"]
        digest = digest["digest"]
        printed = approve(work, ui_server, run_id, work["keys"] / "alice", "--print-only")
        assert printed.returncode == 0, printed.stderr
        fields = json.loads(printed.stdout)

        browser.get(f"{ui_server.removesuffix('/api')}/runs/flow-run/{run_id}")
        # The run's progress reached Prefect's log (the Logs tab is the page's default tab).
        _wait("the run's log", lambda: "trust roots from" in browser.find_element(By.TAG_NAME, "body").text)
        _wait("the Resume button", lambda: _button(browser, "Resume")).click()
        # The modal's body exists before its markdown is rendered into it: wait for the text, not the element.
        form = _wait(
            "the Resume form's text",
            lambda: (el := browser.find_element(By.CSS_SELECTOR, ".p-modal__body article")).text.strip() and el,
        )
        text = form.text
        assert "Approve this model?" in text
        assert digest.split(":")[1][:32] in text and digest.split(":")[1][32:] in text  # the whole digest, wrapped
        assert "commit PASS commit.pass" in text and "evaluation PASS" in text
        assert f"airlock approve {run_id}" in text and "--print-only" in text and "ssh-keygen -Y sign" in text
        # The form reads at its width: nothing in it is wider than the dialog (no sideways scrolling, no cut text).
        scroll, client = browser.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth]", form)
        assert scroll <= client + 1, (scroll, client)

        statement, signature = browser.find_elements(By.CSS_SELECTOR, ".p-modal textarea")
        statement.send_keys(fields["statement"])
        signature.send_keys(fields["signature"])
        _button(browser, "Submit").click()

        def counted():
            for e in Ledger(work["ledger"]).entries():
                d = e.get("data") or {}
                if e["kind"] == "approval.received" and d.get("verdict") == "pass":
                    return d["evidence"]
            return None

        evidence = _wait("the flow counting the pasted approval", counted, timeout=120)
        assert evidence["approver"] == "alice@airlock.demo", evidence
        # The second role from the terminal: the pasted approval was counted, so this one promotes.
        res = approve(work, ui_server, run_id, work["keys"] / "bob")
        assert res.returncode == 0 and "accepted:" in res.stdout, res.stdout + res.stderr
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((work["registry"] / "production" / "CURRENT").read_text())["digest"] == digest
