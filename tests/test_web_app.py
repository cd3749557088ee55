"""The web console over real HTTP: every page, the token rules, the
headers every answer carries, escaping of what hooks and VMs say, and that
nothing can be changed through it."""
from __future__ import annotations

import html.parser
import json
import os
import re
import stat
import threading
import uuid
from pathlib import Path

import pytest
from agentproc import domain_xml, wait_for
from webconsole import recorded_runs, start_web, stop_web, web  # noqa: F401 (fixture)

from vmhooks.catalogue import install
from vmhooks.errors import HookError
from vmhooks.web import auth

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"
PAGES = ["/", "/hooks", "/host", "/metrics", "/api/stamp", "/static/console.js", "/static/console.css"]


def lifecycle(web, make_hook, seed_xml) -> str:
    """A VM through create, pause (whose after hook fails) and continue."""
    make_hook("before_vm_start", "50_pin", """
        import hooking
        doc = hooking.read_domxml()
        doc.getElementsByTagName('vcpu')[0].setAttribute('cpuset', '1-4')
        hooking.write_domxml(doc)
        """, lang="python")  # fmt: skip
    make_hook("after_vm_pause", "20_notify", f'echo "{HOSTILE}" >&2\nexit 1\n')
    make_hook("before_vm_cont", "10_check", "echo checked >&2\n")
    vm_id = web.agent.create(seed_xml, custom={"note": HOSTILE})["vmId"]
    web.agent.pause(vm_id)
    web.agent.cont(vm_id)
    return vm_id


# -- the pages -------------------------------------------------------------------


def test_every_page_answers_with_the_token(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    for path in [*PAGES, f"/vms/{vm_id}"]:
        answer = web.get(path)
        assert answer.status == 200, (path, answer.text[:300])
        assert answer.body
    assert web.get("/static/console.js").headers["Content-Type"].startswith("text/javascript")
    assert json.loads(web.get("/api/stamp").body)["stamp"]


def test_vms_page_shows_status_properties_last_operation_and_a_red_mark(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    page = web.get("/").text
    assert "myvm" in page and vm_id in page and ">up<" in page
    assert "note=&lt;script&gt;" in page  # the custom property, as text
    row = page[page.index(vm_id) : page.index("</tr>", page.index(vm_id))]
    assert "<td>cont</td>" in row and "result-ok" in row
    assert "red-mark" not in page  # the last chain (before_vm_cont) went well
    web.agent.pause(vm_id)  # after_vm_pause fails again, and is now the last chain
    page = web.get("/").text
    assert page.count('class="red-mark"') == 1
    row = page[page.index("red-mark") : page.index("</tr>", page.index("red-mark"))]
    assert "<td>pause</td>" in row and vm_id in row


def test_a_vm_refused_at_start_is_listed_from_its_history(web, make_hook, seed_xml):
    make_hook("before_vm_start", "05_policy", "echo 'policy: no licence' >&2; exit 2\n")
    with pytest.raises(Exception, match="no licence"):
        web.agent.create(seed_xml)
    page = web.get("/").text
    assert "3573e29e-5de9-468a-9fae-16050c6b3dcc" in page and "gone" in page and "red-mark" in page
    timeline = web.get("/vms/3573e29e-5de9-468a-9fae-16050c6b3dcc").text
    assert "policy: no licence" in timeline and "aborted the operation" in timeline


def test_timeline_shows_every_run_with_status_rc_stderr_and_a_side_by_side_diff(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    page = web.get(f"/vms/{vm_id}").text
    runs = recorded_runs(web.agent.history(vm_id))
    assert len(runs) == 3
    # One bar in the strip and one entry per run, each linked.
    assert page.count('<rect class="bar ') == len(runs)
    for index, name in enumerate(["50_pin", "20_notify", "10_check"]):
        key = f"run-{runs[index]['chain']}-0"
        assert f'href="#{key}"' in page and f'id="{key}"' in page
        assert f'<span class="script">{name}</span>' in page
    assert '<span class="rc">rc 1</span>' in page and "status-error" in page
    # The diff: the old line on the left, the new one on the right, the change marked.
    assert '<td class="line del"> &lt;vcpu placement=&#34;static&#34;&gt;1&lt;/vcpu&gt;</td>' in page
    assert (
        '<td class="line ins"> &lt;vcpu<mark> cpuset=&#34;1-4&#34;</mark> placement=&#34;static&#34;&gt;1&lt;/vcpu&gt;</td>'
        in page
    )
    headings = re.findall(r"<h2>(\w+) <span", page)
    assert headings == ["cont", "pause", "create"]  # newest first


def test_timeline_says_which_runs_were_forked_from_the_warm_interpreter(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    runs = recorded_runs(web.agent.history(vm_id))
    assert [(run["script"], run["fast_path"]) for run in runs] == [("50_pin", True), ("20_notify", False),
                                                                   ("10_check", False)]  # fmt: skip
    page = web.get(f"/vms/{vm_id}").text
    forked = re.findall(r'<span class="script">(\w+)</span>(?:(?!</summary>).)*?forked from the warm interpreter',
                        page, re.S)  # fmt: skip
    assert forked == ["50_pin"]
    assert page.count("forked from the warm interpreter") == 1
    # The strip's bar says it too.
    assert [title.split(":")[0] for title in re.findall(r"<title>([^<]*), forked</title>", page)] == [
        "before_vm_start / 50_pin"
    ]


def test_timeline_filters_by_point_and_status(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    by_point = web.get(f"/vms/{vm_id}?point=before_vm_start").text
    assert "50_pin" in by_point.split("<section", 1)[1] and "20_notify" not in by_point.split("<section", 1)[1]
    by_status = web.get(f"/vms/{vm_id}?status=failed").text
    body = by_status.split("<section", 1)[1]
    assert "20_notify" in body and "50_pin" not in body
    assert 'value="failed" selected' in by_status
    none = web.get(f"/vms/{vm_id}?status=timeout").text
    assert "matches these filters" in none
    for bogus in ("status=<bogus>", "point=<bogus>", "point=before_vm_nothing&status=ok"):
        ignored = web.get(f"/vms/{vm_id}?{bogus}")  # an unknown filter is dropped, not echoed
        assert ignored.status == 200 and "bogus" not in ignored.text and "before_vm_nothing" not in ignored.text


def test_hooks_page_lists_inventory_properties_and_last_day(web, make_hook, seed_xml, hooks_dir):
    install(["pincpu"], hooks_dir)
    lifecycle(web, make_hook, seed_xml)
    page = web.get("/hooks").text
    inventory = web.agent.hooks_inventory()
    for point, scripts in inventory.items():
        for script, facts in scripts.items():
            assert script in page and facts["checksum"][:12] in page
    assert "catalogue: pincpu" in page and "pincpu=" in page  # the declared property and its regex
    row = page[page.index("20_notify") : page.index("</tr>", page.index("20_notify"))]
    cells = re.findall(r'<td class="n[^"]*">([^<]*)</td>', row)
    assert cells[:3] == ["1", "1", "0"]  # runs, failures, timeouts in the last 24 h


def test_host_page_shows_libvirt_agent_uptime_and_history(web):
    page = web.get("/host").text
    assert "test:///default" in page
    number = web.agent.conn.getLibVersion()
    assert f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}" in page
    from vmhooks import __version__

    assert __version__ in page
    assert "uptime" in page and "history size" in page and "KiB" in page


def test_unknown_pages_and_vms_are_404_with_the_token(web):
    assert web.get("/nowhere").status == 404
    assert web.get("/vms/0b5c4f4e-1c1c-4c4c-8c8c-000000000001").status == 404
    assert web.get("/vms/..%2f..%2fetc").status == 404
    assert web.get("/vms/not-a-uuid").status == 404
    assert web.get("/vms/3573e29e").status == 404  # a prefix names no page: the CLI takes those, not URLs
    assert web.get("/static/../app.py").status == 404


# -- the token ---------------------------------------------------------------------


def test_without_the_token_every_path_is_401(web):
    for path in [*PAGES, "/vms/x", "/nowhere", "/static/../x"]:
        answer = web.request(path)
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"vmhooks ui" in answer.body
    page = web.request("/").text
    assert "myvm" not in page and "vmhooks ui" in page


def test_wrong_tokens_are_refused_everywhere(web):
    port = web.console.port
    assert web.request("/", token="not-it").status == 401
    assert web.request("/", token=web.token + "x").status == 401
    assert web.request("/", headers={"Authorization": f"Basic {web.token}"}).status == 401
    assert web.request("/", headers={"Cookie": f"{auth.cookie_name(port)}=wrong"}).status == 401
    assert web.request("/", headers={"Cookie": f"{auth.cookie_name(port + 1)}={web.token}"}).status == 401
    assert web.request("/?token=wrong").status == 401
    assert web.request(f"/?token={web.token}&token={web.token}").status == 401  # once, not twice
    assert web.request("/?token=%ff%fe").status == 401  # not even UTF-8


def test_token_in_the_url_sets_a_strict_cookie_and_redirects_without_it(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    answer = web.request(f"/vms/{vm_id}?point=before_vm_start&token={web.token}&status=ok")
    assert answer.status == 303
    location = answer.headers["Location"]
    assert location == f"/vms/{vm_id}?point=before_vm_start&status=ok"
    cookie = answer.headers["Set-Cookie"]
    name = auth.cookie_name(web.console.port)
    assert cookie.startswith(f"{name}={web.token};")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    # The cookie alone opens the page the redirect names.
    followed = web.request(location, headers={"Cookie": f"other=1; {name}={web.token}"})
    assert followed.status == 200 and "50_pin" in followed.text


def test_the_redirect_never_leaves_the_site(web):
    for path in ("//evil.example/x", "/\\evil.example/x", "/%2F%2Fevil.example"):
        answer = web.request(f"{path}?token={web.token}")
        assert answer.status == 303
        location = answer.headers["Location"]
        assert location.startswith("/") and not location.startswith(("//", "/\\")), location
        assert "\\" not in location


def test_token_file_is_private_and_withdrawn_at_stop(tmp_path, hooks_dir):
    started = start_web(tmp_path, hooks_dir)
    run_dir = tmp_path / "run"
    token_file = run_dir / auth.TOKEN_FILE
    try:
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert token_file.read_text().strip() == started.token
        assert auth.read_published(run_dir) == (started.token, f"127.0.0.1:{started.console.port}")
        assert len(started.token) >= 40
    finally:
        stop_web(started)
    assert not token_file.exists() and not (run_dir / auth.ADDRESS_FILE).exists()


def test_each_start_makes_a_new_token(tmp_path, hooks_dir):
    first = start_web(tmp_path / "a", hooks_dir)
    second = start_web(tmp_path / "b", hooks_dir)
    try:
        assert first.token != second.token
        assert second.request("/", token=first.token).status == 401
    finally:
        stop_web(first)
        stop_web(second)


def test_metrics_public_opens_metrics_only(tmp_path, hooks_dir):
    public = start_web(tmp_path, hooks_dir, metrics_public=True)
    try:
        assert public.request("/metrics").status == 200
        assert public.request("/").status == 401
        assert public.request("/api/stamp").status == 401
    finally:
        stop_web(public)


# -- never a write; headers; escaping -------------------------------------------------


def test_nothing_but_reads(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    before = web.agent.list_vms()
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        answer = web.get(f"/vms/{vm_id}", method=method, body=b'{"jsonrpc": "2.0", "method": "VM.destroy"}')
        assert answer.status == 405, method
        assert answer.headers["Allow"] == "GET, HEAD"
    assert web.agent.list_vms() == before
    head = web.get("/", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) > 0
    page = web.get(f"/vms/{vm_id}").text
    assert "<button" in page  # the filter form's, a GET
    assert not re.search(r'<form[^>]*method="post"', page, re.I)


def test_every_answer_carries_the_csp_and_security_headers(web):
    for path, token in (("/", web.token), ("/", None), ("/nowhere", web.token), ("/metrics", web.token)):
        headers = web.request(path, token=token).headers
        csp = headers["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
        assert directives["script-src"] == "'self'"
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"


class Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_hostile_stderr_and_properties_show_as_text(web, make_hook, seed_xml):
    vm_id = lifecycle(web, make_hook, seed_xml)
    web.agent.pause(vm_id)  # the hostile hook's failure is now the VM's last chain too
    for path in ("/", f"/vms/{vm_id}", f"/vms/{vm_id}?status=failed"):
        page = web.get(path).text
        parser = Tags()
        parser.feed(page)
        scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
        assert scripts == [{"src": "/static/console.js", "defer": None}], path  # ours, and only ours
        assert not [tag for tag, _ in parser.tags if tag == "img"], path
        assert not [(tag, attrs) for tag, attrs in parser.tags if any(name.startswith("on") for name in attrs)]
        assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page, path


def test_live_refresh_stamp_moves_with_each_chain_and_status(web, make_hook, seed_xml):
    make_hook("before_vm_pause", "10_a", "exit 0\n")
    stamp = lambda: json.loads(web.get("/api/stamp").body)["stamp"]  # noqa: E731
    first = stamp()
    vm_id = web.agent.create(seed_xml)["vmId"]  # no hook at start: the status alone moves it
    second = stamp()
    assert second != first
    assert stamp() == second  # nothing happened: it stays
    web.agent.pause(vm_id)
    assert stamp() != second
    page = web.get("/").text
    assert f'data-stamp="{stamp()}"' in page


def test_static_files_are_the_packaged_ones():
    static = Path(__import__("vmhooks.web", fromlist=["x"]).__file__).parent / "static"
    script = (static / "console.js").read_text()
    assert "/api/stamp" in script and "eval(" not in script and "innerHTML" not in script


def test_live_refresh_stamp_moves_when_an_older_operation_ends_under_a_newer_one(web, make_hook, marks):
    make_hook("before_vm_pause", "10_wait",
              f"touch {marks}/in-$vmId\nwhile [ ! -e {marks}/go-$vmId ]; do sleep 0.02; done\nexit 1\n")  # fmt: skip
    stamp = lambda: json.loads(web.get("/api/stamp").body)["stamp"]  # noqa: E731
    older, newer = str(uuid.uuid4()), str(uuid.uuid4())
    for vm_id in (older, newer):
        web.agent.create(domain_xml(f"vm-{vm_id[:8]}", vm_id))
    refused: list[str] = []

    def pause(vm_id: str) -> None:
        try:
            web.agent.pause(vm_id)
        except HookError:
            refused.append(vm_id)

    threads = [threading.Thread(target=pause, args=(vm_id,)) for vm_id in (older, newer)]
    try:
        for thread, vm_id in zip(threads, (older, newer)):  # the newer pause starts while the older one waits
            thread.start()
            wait_for((marks / f"in-{vm_id}").exists)
        before = stamp()
        (marks / f"go-{older}").touch()  # the older pause fails; no VM changes its status
        threads[0].join(10)
        assert refused == [older]
        assert stamp() != before
    finally:
        for vm_id in (older, newer):
            (marks / f"go-{vm_id}").touch()
        for thread in threads:
            thread.join(10)
