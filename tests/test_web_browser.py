"""The web console in a real headless Chromium, against a real agent
process (`vmhooks serve --http-listen`) after a demo-like lifecycle: the
URL `vmhooks ui` prints logs in, the VMs page and a VM's timeline show the
runs and a diff, the live refresh brings a new operation in, a hook's
hostile stderr stays text, and the CSP holds. Screenshots go to
build/screenshots/."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from agentproc import AgentProcess
from browser import chromium_missing, full_page_screenshot, headless_chromium
from webconsole import recorded_runs

DEMO_POINTS = (
    "before_vm_start", "after_vm_start", "before_vm_pause", "after_vm_pause", "before_vm_cont", "after_vm_cont",
    "before_vm_hibernate", "after_vm_hibernate", "before_vm_dehibernate", "after_vm_dehibernate",
    "before_get_vm_stats", "after_get_vm_stats", "before_vm_destroy", "after_vm_destroy",
)  # fmt: skip
HOSTILE = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = chromium_missing()
    if reason is not None and os.geteuid() != 0:
        pytest.skip(reason)  # only root can install it (scripts/bootstrap test does)
    assert reason is None, reason
    with headless_chromium() as driver:
        yield driver


def install_demo_hooks(hooks: Path) -> None:
    """The demo's hooks (pincpu, cantmigrate, site), a trace hook on every
    point the lifecycle passes, and a notifier that fails with hostile stderr."""

    def put(point: str, name: str, text: str) -> None:
        directory = hooks / point
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)

    source = resources.files("vmhooks.demo") / "hooks"
    for point_dir in source.iterdir():
        for script in point_dir.iterdir():
            put(point_dir.name, script.name, script.read_text().replace("#!/usr/bin/python3", f"#!{sys.executable}", 1))
    for point in DEMO_POINTS:
        put(point, "10_trace", '#!/bin/sh\necho "trace: vmId=${vmId:-none} pincpu=${pincpu:-unset}" >&2\n')
    put("after_vm_pause", "20_notify", f"#!/bin/sh\necho 'notify: monitoring unreachable: {HOSTILE}' >&2\nexit 1\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, seed_xml_text: str) -> Iterator[tuple[AgentProcess, str, str]]:
    root = tmp_path_factory.mktemp("console")
    os.chmod(root, 0o755)
    hooks = root / "hooks"
    hooks.mkdir(mode=0o755)
    install_demo_hooks(hooks)
    agent = AgentProcess(root, hooks, "test:///default", "--http-listen", "127.0.0.1:0").start()
    try:
        myvm = agent.call("VM.create", xml=seed_xml_text, custom={"pincpu": "1-4"})["vmId"]
        for method in ("VM.pause", "VM.cont", "VM.hibernate", "VM.dehibernate", "VM.getStats"):
            agent.call(method, vmId=myvm)
        agent.call("Host.getCapabilities")
        other = seed_xml_text.replace("<name>myvm</name>", "<name>db01</name>")
        other = other.replace("3573e29e-5de9-468a-9fae-16050c6b3dcc", str(uuid.uuid4()))
        db01 = agent.call("VM.create", xml=other)["vmId"]
        agent.call("VM.pause", vmId=db01)  # its after_vm_pause notifier fails: a red mark
        ui = subprocess.run(
            [sys.executable, "-m", "vmhooks.cli", "ui", "--no-browser", "--run-dir", str(agent.run_dir)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        yield agent, ui.stdout.strip(), db01
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def seed_xml_text() -> str:
    return (Path(__file__).parent / "data" / "seed-domain.xml").read_text()


def wait_for(predicate, timeout: float = 15.0, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_vms_page_after_logging_in_with_the_url_vmhooks_ui_prints(browser, served):
    agent, url, db01 = served
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    browser.get(url)
    base = url.split("?", 1)[0]
    assert browser.current_url == base  # the token left the address bar at once
    cookies = browser.get_cookies()
    assert [c["name"] for c in cookies] == [f"vmhooks_console_{base.rsplit(':', 1)[1].rstrip('/')}"]
    assert cookies[0]["httpOnly"] is True and cookies[0]["sameSite"] == "Strict"
    rows = browser.find_elements("css selector", "table.vms tbody tr")
    names = [row.find_element("css selector", "td:nth-child(2)").text for row in rows]
    assert names == ["db01", "myvm"]
    assert rows[0].find_elements("css selector", ".red-mark")  # db01's last chain failed
    assert not rows[1].find_elements("css selector", ".red-mark")
    assert "pincpu=1-4" in rows[1].text and "up" in rows[1].text
    full_page_screenshot(browser, "console-vms")
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it


def test_timeline_shows_the_runs_and_a_diff(browser, served):
    agent, url, _ = served
    browser.get(url)
    browser.find_element("link text", "myvm").click()
    wait_for(lambda: browser.find_elements("css selector", "svg.strip"), what="the timeline")
    myvm = next(vm for vm in agent.call("VM.list") if vm["name"] == "myvm")
    runs = recorded_runs(agent.call("Host.getHookHistory", vmId=myvm["vmId"], limit=1000))
    bars = browser.find_elements("css selector", "svg.strip rect.bar")
    assert len(bars) == len(runs) > 10
    assert all(float(bar.get_attribute("width")) >= 2 for bar in bars)
    rows = [label.text for label in browser.find_elements("css selector", "svg.strip text.point-label")]
    assert rows[:2] == ["before_vm_start", "after_vm_start"]  # in the order the points ran
    # The pincpu hook's run is open, its diff side by side with the change marked.
    diff = browser.find_element("css selector", "table.diff")
    assert diff.is_displayed()
    marked = [mark.text for mark in diff.find_elements("css selector", "td.line.ins mark")]
    assert any("cpuset" in text and "1-4" in text for text in marked)
    removed = diff.find_elements("css selector", "td.line.del")
    assert any("<vcpu" in cell.text for cell in removed)
    assert "pinning cpu to: 1-4" in browser.find_element("tag name", "main").text
    full_page_screenshot(browser, "console-timeline")
    # A bar links to its run, and the run opens.
    browser.set_window_size(1440, 900)
    hibernate = next(bar for bar in bars if "before_vm_hibernate" in bar.find_element("tag name", "title").get_attribute("textContent"))
    browser.execute_script("arguments[0].parentNode.dispatchEvent(new MouseEvent('click', {bubbles: true}))", hibernate)
    wait_for(lambda: "#run-" in browser.current_url, what="the run's link")
    target = browser.find_element("id", browser.current_url.split("#", 1)[1])
    wait_for(lambda: target.get_attribute("open") is not None, what="the run to open")


def test_hostile_stderr_stays_text_and_the_csp_holds(browser, served):
    agent, url, db01 = served
    browser.get(url)
    browser.get(url.split("?", 1)[0] + f"vms/{db01}?status=failed")
    stderr = browser.find_element("css selector", "pre.stderr").text
    assert HOSTILE in stderr
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_elements("css selector", "main img")
    # An inline script injected by hand is refused by the page's CSP.
    browser.execute_script(
        "var s = document.createElement('script'); s.textContent = 'window.inlineRan = 1'; document.body.appendChild(s);"
    )
    assert browser.execute_script("return window.inlineRan === undefined")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert all("Content Security Policy" in entry["message"] for entry in errors), errors


def test_live_refresh_brings_a_new_operation_in_without_a_reload(browser, served):
    agent, url, db01 = served
    browser.get(url)
    browser.get(url.split("?", 1)[0] + f"vms/{db01}")
    browser.execute_script("window.sameDocument = true")
    # Read in the page: the refresh may swap the elements between two WebDriver calls.
    script = "return [...document.querySelectorAll('section.operation h2')].map(h => h.textContent.trim().split(/\\s+/)[0])"
    headings = lambda: browser.execute_script(script)  # noqa: E731
    assert headings() == ["pause", "create"]
    agent.call("VM.cont", vmId=db01)
    wait_for(lambda: headings()[:1] == ["cont"], what="the live refresh to show cont")
    assert browser.execute_script("return window.sameDocument === true")  # swapped in place, not reloaded
    assert "updated" in browser.find_element("id", "live").text
    full_page_screenshot(browser, "console-timeline-live")


def test_hooks_and_host_pages(browser, served):
    agent, url, _ = served
    browser.get(url)
    browser.find_element("link text", "Hooks").click()
    wait_for(lambda: browser.find_elements("css selector", "table.hooks"), what="the hooks page")
    text = browser.find_element("tag name", "main").text
    assert "50_pincpu" in text and "50_cantmigrate" in text and "10_trace" in text
    full_page_screenshot(browser, "console-hooks")
    browser.find_element("link text", "Host").click()
    wait_for(lambda: browser.find_elements("css selector", "dl.facts"), what="the host page")
    assert "test:///default" in browser.find_element("tag name", "main").text
    full_page_screenshot(browser, "console-host")
