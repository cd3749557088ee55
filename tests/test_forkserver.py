"""Python hooks through the fork server (issue 13): each probe hook runs both
ways, forked from a warm interpreter and exec'd, and everything it can see
of how it was started and how it ended must be the same, byte for byte.
(Every catalogue hook runs both ways too: tests/test_catalogue_hooks.py.)"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import process_dead

from vmhooks import forkserver
from vmhooks.forkserver import FastPathSettings, plan, servable
from vmhooks.runner import ChainResult, RunnerConfig, Status, run_chain

SEED_UUID = "3573e29e-5de9-468a-9fae-16050c6b3dcc"
FAST = FastPathSettings(True)
EXEC = FastPathSettings(False)

# Reports what it saw into $probe_out (JSON), pids and the payload's private
# directory (different in every chain) replaced by names.
REPORT = """
import os as _os
from json import dumps as _dumps
def report(value):
    text = _dumps(value, default=repr, sort_keys=True)
    text = text.replace(_os.path.dirname(_os.environ.get("_hook_domxml", "/nowhere/x")), "PAYLOAD-DIR")
    with open(_os.environ["probe_out"], "a") as handle:
        handle.write(text.replace(str(_os.getpid()), "PID") + "\\n")
"""


class Both:
    """Runs a chain twice, fast path then exec, and checks it saw the same."""

    def __init__(self, hooks_dir: Path, tmp: Path) -> None:
        self.hooks_dir = hooks_dir
        self.tmp = tmp
        self.out = tmp / "probe-out"
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST")}

    def hook(self, name: str, body: str, point: str = "before_vm_start", shebang: str | None = None) -> Path:
        directory = self.hooks_dir / point
        directory.mkdir(mode=0o755, exist_ok=True)
        os.chmod(directory, 0o755)
        path = directory / name
        path.write_text(f"{shebang or '#!' + sys.executable}\n{REPORT}\n{textwrap.dedent(body).lstrip()}")
        os.chmod(path, 0o755)
        return path

    def run(
        self, point: str = "before_vm_start", payload: Any = "<domain><name>d</name></domain>",
        expect_fast: bool = True, custom: dict[str, str] | None = None, timeout: float = 20,
    ) -> tuple[ChainResult, str]:
        seen = []
        for settings in (FAST, EXEC):
            self.out.unlink(missing_ok=True)
            config = RunnerConfig(self.hooks_dir, timeout=timeout, kill_grace=0.3, base_env=self.env,
                                  fast_path=settings, work_dir=self.tmp)  # fmt: skip
            result = run_chain(point, payload, config, custom={"probe_out": str(self.out), **(custom or {})},
                               vm_id=SEED_UUID)  # fmt: skip
            assert [run.fast_path for run in result.scripts] == [settings.enabled and expect_fast] * len(result.scripts)
            seen.append((observable(result), self.out.read_text() if self.out.exists() else ""))
        stderrs = [f"--- {way}:\n{run[0][0][0][3]}" for way, run in zip(("fast", "exec"), seen) if run[0][0]]
        assert seen[0] == seen[1], "\n".join(stderrs)
        return result, seen[0][1]


def observable(result: ChainResult) -> Any:
    """What a chain's caller sees; object addresses differ from run to run anyway (ASLR)."""
    return ([(run.name, run.status, run.rc, re.sub("0x[0-9a-f]+", "0x?", run.stderr), run.changed, run.diff,
              run.note) for run in result.scripts], result.payload, result.rejected)  # fmt: skip


@pytest.fixture
def both(hooks_dir: Path, tmp_path: Path) -> Both:
    return Both(hooks_dir, tmp_path)


def lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


# --- what the script sees when it starts -------------------------------------------------


def test_argv_executable_path_main_and_flags(both: Both) -> None:
    both.hook("10_probe", """
        import sys
        report({"argv": sys.argv, "orig_argv": sys.orig_argv, "executable": sys.executable, "path": sys.path,
                "flags": list(sys.flags), "file": __file__, "name": __name__, "doc": __doc__,
                "globals": list(globals()), "loader": [type(__loader__).__name__, __loader__.name, __loader__.path],
                "spec": __spec__, "package": __package__, "cached": __cached__, "annotations": __annotations__,
                "prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix], "warnoptions": sys.warnoptions,
                "encodings": [sys.getfilesystemencoding(), sys.getdefaultencoding()],
                "comm": open("/proc/self/comm").read(), "cmdline": open("/proc/self/cmdline", "rb").read().decode()})
    """)
    _, out = both.run()
    [seen] = lines(out)
    path = str(both.hooks_dir / "before_vm_start" / "10_probe")
    assert seen["argv"] == [path] and seen["orig_argv"] == [sys.executable, path]
    assert seen["path"][0] == str(both.hooks_dir.resolve() / "before_vm_start")
    assert seen["comm"] == "10_probe\n"


def test_symlinked_script_and_relative_hooks_root(both: Both, monkeypatch: pytest.MonkeyPatch) -> None:
    # sys.path[0] is where the link leads; __file__ is made absolute, argv is as given.
    target = both.hook("real_script", "import sys\nreport([sys.argv, sys.path[0], __file__])\n", point="elsewhere")
    (both.hooks_dir / "before_vm_start").mkdir(mode=0o755)
    (both.hooks_dir / "before_vm_start" / "10_link").symlink_to(target)
    monkeypatch.chdir(both.hooks_dir.parent)
    both.hooks_dir = Path(both.hooks_dir.name)
    _, out = both.run()
    argv, path0, file = lines(out)[0]
    assert argv == [f"{both.hooks_dir}/before_vm_start/10_link"]
    assert path0 == str(target.parent.resolve()) and file == os.path.join(os.getcwd(), argv[0])


def test_environment_exactly_as_the_runner_builds_it(both: Both) -> None:
    both.hook("10_probe", """
        import os, subprocess
        report({"environ": list(os.environ.items()), "proc": open("/proc/self/environ", "rb").read().decode(),
                "child": subprocess.run(["/usr/bin/env"], capture_output=True, text=True).stdout})
    """)
    _, out = both.run(custom={"pincpu": "1-4", "FROM_HOOKS": "yes"})
    [seen] = lines(out)
    names = [name for name, _ in seen["environ"]]
    order = ["probe_out", "pincpu", "FROM_HOOKS", "vmId", "_hook_domxml"]
    assert [names.index(name) for name in order] == sorted(names.index(name) for name in order)
    assert ["pincpu", "1-4"] in seen["environ"]


def test_cwd_umask_rlimits_signals_and_process_group(both: Both) -> None:
    both.hook("10_probe", """
        import os, resource, signal
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        handlers = {}
        for number in range(1, signal.NSIG):
            try:
                handler = signal.getsignal(number)
            except ValueError:
                continue
            handlers[number] = getattr(handler, "__name__", handler)
        limits = {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource)
                  if name.startswith("RLIMIT_")}
        report({"cwd": os.getcwd(), "status": {key: status[key].strip() for key in
                    ("Umask", "SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd", "NoNewPrivs", "Seccomp", "CapEff")},
                "mask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), "handlers": handlers, "limits": limits,
                "own session": os.getsid(0) == os.getpid(), "own group": os.getpgid(0) == os.getpid(),
                "parent": os.getppid(), "scheduling": [os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)],
                "cgroup": open("/proc/self/cgroup").read().rsplit("/hook-", 1)[0]})
    """)
    old_umask = os.umask(0o027)
    soft, hard = old_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 900), hard))
    try:
        _, out = both.run()
    finally:
        os.umask(old_umask)
        resource.setrlimit(resource.RLIMIT_NOFILE, old_nofile)
    [seen] = lines(out)
    assert seen["status"]["Umask"] == "0027" and seen["own session"] and seen["own group"]
    assert seen["parent"] == os.getpid()  # the agent's child, as an exec'd hook is
    assert seen["limits"]["RLIMIT_NOFILE"][0] == min(soft, 900)


def test_fds_and_standard_streams(both: Both) -> None:
    both.hook("10_probe", """
        import fcntl, os, sys
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        def describe(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError as exc:
                return str(exc)
            return [target.split(":")[0], os.get_inheritable(fd), fcntl.fcntl(fd, fcntl.F_GETFL)]
        streams = [None if s is None else [s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through,
                   type(s.buffer).__name__, s.isatty()] for s in (sys.stdin, sys.stdout, sys.stderr)]
        report({"fds": fds, "std": [describe(fd) for fd in (0, 1, 2)], "streams": streams,
                "same objects": [sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__,
                                 sys.stderr is sys.__stderr__]})
    """)
    _, out = both.run()
    [seen] = lines(out)
    assert seen["fds"][:3] == [0, 1, 2] and len(seen["fds"]) == 4  # + the listing's own


def test_a_module_beside_the_script_wins_as_on_exec(both: Both) -> None:
    # The server has tempfile imported; a tempfile.py beside the script is what the script gets: exec'd.
    directory = both.hooks_dir / "before_vm_start"
    both.hook("10_probe", "import tempfile\nreport(tempfile.__file__)\n")
    (directory / "tempfile.py").write_text("MINE = True\n")
    _, out = both.run(expect_fast=False)
    assert lines(out) == [str(directory / "tempfile.py")]


# --- how it ends -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "rc", "stderr"),
    [
        ("pass", 0, ""),
        ("import sys; sys.exit(3)", 3, ""),
        ("import sys; sys.exit(2)", 2, ""),
        ("import sys; sys.exit(None)", 0, ""),
        ("import sys; sys.exit(True)", 1, ""),
        ("import sys; sys.exit(256 + 5)", 5, ""),
        ("import sys; sys.exit('bye now')", 1, "bye now\n"),
        ("import os; os._exit(7)", 7, ""),
        ("raise SystemExit(4)", 4, ""),
        ("import sys; sys.modules['not_a_module'] = type('Class', (), {})", 0, ""),  # libvirt-python does so
    ],
)  # fmt: skip
def test_exit_codes(both: Both, body: str, rc: int, stderr: str) -> None:
    both.hook("10_probe", body)
    result, _ = both.run()
    assert (result.scripts[0].rc, result.scripts[0].stderr) == (rc, stderr)


@pytest.mark.parametrize(
    "body",
    [
        "def f():\n    raise ValueError('broken')\nf()\n",
        "try:\n    {}['k']\nexcept KeyError as e:\n    raise RuntimeError('wrapped') from e\n",
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    raise OSError(5, 'during handling')\n",
        "exec('x = (')\n",
        "import sys\nsys.excepthook = lambda *a: sys.stderr.write(f'my hook: {a[1]!r}\\n')\nraise ValueError(1)\n",
        "import sys\ndef bad(*a):\n    raise TypeError('hook fails')\nsys.excepthook = bad\nraise ValueError(2)\n",
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write(repr(sys.last_value) + '\\n'))\nraise ValueError(3)\n",
    ],
)
def test_uncaught_exceptions_print_the_same_traceback_and_exit_1(both: Both, body: str) -> None:
    both.hook("10_probe", body)
    result, _ = both.run()
    assert result.scripts[0].rc == 1 and result.scripts[0].stderr


def test_keyboard_interrupt_kills_with_sigint_after_the_traceback(both: Both) -> None:
    both.hook("10_probe", "raise KeyboardInterrupt\n")
    result, _ = both.run()
    run = result.scripts[0]
    assert (run.status, run.rc) == (Status.SIGNAL, -signal.SIGINT)
    assert run.stderr.endswith("KeyboardInterrupt\n")


def test_atexit_handlers_flushed_buffers_and_finalizers(both: Both, tmp_path: Path) -> None:
    kept = tmp_path / "kept.txt"
    both.hook("10_probe", f"""
        import atexit, os, sys, tempfile
        atexit.register(lambda: sys.stderr.write("atexit first registered, runs last\\n"))
        atexit.register(lambda: 1 / 0)
        atexit.register(lambda: sys.stderr.write("atexit last registered, runs first\\n"))
        class Noisy:
            def __del__(self):
                sys.stderr.write("finalized at exit\\n")
        noisy = Noisy()
        scratch = tempfile.NamedTemporaryFile(prefix="probe-")
        open(os.environ["probe_out"] + ".scratch", "a").write(scratch.name + "\\n")
        sys.stdout = open({str(kept)!r}, "w")
        print("buffered, never flushed by the hook")
        sys.stderr.write("no newline at the end")
    """)
    result, _ = both.run()
    scratch = Path(f"{both.out}.scratch").read_text().split()
    assert len(scratch) == 2 and not any(os.path.exists(name) for name in scratch)  # deleted by their finalizers
    assert kept.read_text() == "buffered, never flushed by the hook\n"
    stderr = result.scripts[0].stderr
    assert stderr.index("runs first") < stderr.index("ZeroDivisionError") < stderr.index("runs last")
    assert "finalized at exit" in stderr


def test_threads_started_by_the_hook(both: Both, tmp_path: Path) -> None:
    done = tmp_path / "thread-done"
    both.hook("10_probe", f"""
        import threading, time
        def late():
            time.sleep(0.3)
            open({str(done)!r}, "a").write("x")
        threading.Thread(target=late).start()  # not a daemon: the interpreter waits for it
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # a daemon: not waited for
        report([t.daemon for t in threading.enumerate()])
        report([str(threading.main_thread().native_id), str(threading.get_native_id())])
    """)
    result, out = both.run()
    assert done.read_text() == "xx"  # once per way
    assert lines(out)[-1] == ["PID", "PID"]
    assert result.scripts[0].duration_s < 10


def test_a_module_the_hook_imported_is_torn_down_at_exit(both: Both) -> None:
    directory = both.hook("10_probe", "import own_module\nown_module.keep = own_module.Noisy()\n").parent
    (directory / "own_module.py").write_text(
        "import sys\nclass Noisy:\n    def __del__(self):\n        sys.stderr.write('own module cleared\\n')\n"
    )
    result, _ = both.run()
    assert result.scripts[0].stderr == "own module cleared\n"


def test_fork_inside_the_hook(both: Both) -> None:
    both.hook("10_probe", """
        import os, sys
        pid = os.fork()
        if pid == 0:
            report(["child", os.getppid() != 1, sys.argv])
            os._exit(3)
        _, status = os.waitpid(pid, 0)
        report(["parent", os.waitstatus_to_exitcode(status)])
    """)
    _, out = both.run()
    assert lines(out)[-1] == ["parent", 3]


def test_a_module_the_server_imported_changed_by_a_hook_stays_changed_in_that_hook_only(both: Both) -> None:
    both.hook("10_first", """
        import json, hooking
        json.dumps = lambda *a, **k: "changed"
        hooking.log = None
        report([json.dumps(1), hooking.log])
    """)
    both.hook("20_second", "import json, hooking\nreport([json.dumps(1), hooking.log.__name__])\n")
    _, out = both.run()
    assert lines(out) == [["changed", None], ["1", "log"]]


def test_a_script_rewritten_by_the_one_before_runs_as_rewritten(both: Both) -> None:
    # The server sets up each next script of a chain ahead of time: it must see the file as it is when it runs.
    second = both.hook("20_second", "report('as written first')\n")
    both.hook("10_first", f"""
        text = open({str(second)!r}).read().replace("as written first", "as rewritten by 10_first, longer")
        open({str(second)!r}, "w").write(text)
    """)
    original = second.read_text()
    seen = []
    for _ in range(2):  # the first run leaves it rewritten: put it back for the next
        _, out = both.run()
        seen.append(lines(out))
        second.write_text(original)
    assert seen == [["as rewritten by 10_first, longer"]] * 2


def test_hooking_edits_and_warnings(both: Both, seed_xml: str) -> None:
    both.hook("10_probe", point="after_vm_start", body="""
        import warnings, hooking
        warnings.warn("careful")
        warnings.warn("old", DeprecationWarning)
        doc = hooking.read_domxml()
        doc.getElementsByTagName("name")[0].firstChild.data = "renamed"
        hooking.write_domxml(doc)
    """)
    result, _ = both.run(point="after_vm_start", payload=seed_xml)
    assert "UserWarning: careful" in result.scripts[0].stderr and "DeprecationWarning: old" in result.scripts[0].stderr
    assert "renamed" in result.scripts[0].diff


def test_a_timeout_kills_the_forked_hook_and_what_it_started(both: Both, marks: Path) -> None:
    both.hook("10_probe", f"""
        import subprocess, time
        subprocess.Popen(["setsid", "sh", "-c", "echo $$ >> {marks}/escaped; exec sleep 300"])
        time.sleep(300)
    """)
    result, _ = both.run(timeout=2)
    assert result.scripts[0].status is Status.TIMEOUT
    assert [process_dead(int(pid)) for pid in (marks / "escaped").read_text().split()] == [True, True]


# --- which scripts take it -----------------------------------------------------------------


@pytest.fixture
def script(tmp_path: Path) -> Callable[..., str]:
    def make(first_line: str, body: str = "pass\n", mode: int = 0o755) -> str:
        path = tmp_path / "50_hook"
        path.write_bytes(first_line.encode() + b"\n" + body.encode())
        os.chmod(path, mode)
        return str(path)

    return make


def test_the_agents_own_interpreter_is_served(script: Callable[..., str]) -> None:
    path = script(f"#!{sys.executable}")
    expected = forkserver.Plan(sys.executable, (sys.executable, path), "50_hook")
    assert plan(path, "before_vm_start", os.environ, FAST) == expected


def test_env_names_the_interpreter_found_in_path(script: Callable[..., str]) -> None:
    path = script("#!/usr/bin/env python3")
    found = shutil.which("python3", path=os.path.dirname(sys.executable))
    env = {"PATH": os.path.dirname(sys.executable)}
    assert plan(path, "p", env, FAST) == forkserver.Plan(found, (found, path), "python3")


@pytest.mark.parametrize(
    "first_line",
    ["#!/bin/sh", f"#!{sys.executable} -u", f"#!{sys.executable}\r", "#!python3", "#!/usr/bin/env -S python3",
     f"#! {sys.executable} -E", "# no shebang"],
)  # fmt: skip
def test_anything_else_is_execd(script: Callable[..., str], first_line: str) -> None:
    found = plan(script(first_line), "p", os.environ, FAST)
    assert found is None or not servable(found.interpreter, FAST)


def test_setuid_excluded_disabled_and_other_interpreters_are_execd(script: Callable[..., str], tmp_path: Path) -> None:
    path = script(f"#!{sys.executable}")
    os.chmod(path, 0o4755)
    assert plan(path, "p", os.environ, FAST) is None
    os.chmod(path, 0o755)
    assert plan(path, "before_vm_start", os.environ, FastPathSettings(True, exclude=("before_vm_start/50_*",))) is None
    assert plan(path, "p", os.environ, FastPathSettings(True, exclude=(f"{tmp_path}/*",))) is None
    assert plan(path, "p", os.environ, EXEC) is None
    other = tmp_path / "python-copy"
    shutil.copy(sys.executable, other)
    assert not servable(str(other), FAST)
    assert servable(str(other), FastPathSettings(True, interpreters=(str(other),)))
    link = tmp_path / "python-link"
    link.symlink_to(sys.executable)
    assert servable(str(link), FAST)  # compared after resolving links


@pytest.mark.parametrize(
    ("body", "why"),
    [("x = (\n", "SyntaxError"), ("print('\\d')\n", "warns"), ("print('a\0b')\n", "ValueError")],
)
def test_a_script_the_server_cannot_compile_cleanly_is_execd(both: Both, body: str, why: str) -> None:
    both.hook("10_probe", body)
    both.run(expect_fast=False)  # and exec's own messages, byte for byte


def test_a_zip_application_is_execd(both: Both, tmp_path: Path) -> None:
    import zipapp

    source = tmp_path / "app"
    source.mkdir()
    (source / "__main__.py").write_text("import os\nopen(os.environ['probe_out'], 'w').write('zipped\\n')\n")
    target = both.hooks_dir / "before_vm_start" / "10_app"
    target.parent.mkdir(mode=0o755)
    zipapp.create_archive(source, target, interpreter=sys.executable)
    os.chmod(target, 0o755)
    _, out = both.run(expect_fast=False)
    assert out == "zipped\n"


# --- the servers ----------------------------------------------------------------------------


def test_a_server_that_died_is_replaced(both: Both) -> None:
    both.hook("10_probe", "report('ran')\n")
    both.run()
    for server in list(forkserver.SERVERS._servers.values()):
        if isinstance(server, forkserver.Server):
            server.proc.kill()
            server.proc.wait()
    _, out = both.run()
    assert lines(out) == ["ran"]


def test_a_changed_module_restarts_the_server(both: Both, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "hooking.py").write_text("VERSION = 1\n")
    both.env["PYTHONPATH"] = str(lib)
    both.hook("10_probe", "import hooking\nreport(hooking.VERSION)\n")
    assert lines(both.run()[1]) == [1]
    (lib / "hooking.py").write_text("VERSION = 2  # a new version of the module\n")
    for server in forkserver.SERVERS._servers.values():
        if isinstance(server, forkserver.Server):
            server.stale_checked = 0.0
    assert lines(both.run()[1]) == [2]


def test_children_of_the_fast_path_are_random_independently(both: Both) -> None:
    both.hook("10_a", "import random\nreport(random.random())\n")
    both.hook("20_b", "import random\nreport(random.random())\n")
    config = RunnerConfig(both.hooks_dir, base_env=both.env, fast_path=FAST, work_dir=both.tmp)
    run_chain("before_vm_start", "<domain/>", config, custom={"probe_out": str(both.out)})
    first, second = lines(both.out.read_text())
    assert first != second


def test_with_the_subreaper_a_timeout_kills_the_forked_hook_and_what_it_started(both: Both, marks: Path) -> None:
    both.hook("10_probe", f"""
        import subprocess, time
        subprocess.Popen(["setsid", "sh", "-c", "echo $$ >> {marks}/escaped; exec sleep 300"])
        time.sleep(300)
    """)
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from vmhooks import containment
        from vmhooks.forkserver import FastPathSettings
        from vmhooks.runner import RunnerConfig, run_chain
        containment.use("subreaper")
        config = RunnerConfig(Path(sys.argv[1]), timeout=2, kill_grace=0.2, fast_path=FastPathSettings(True))
        run = run_chain("before_vm_start", "<domain/>", config, custom={"probe_out": sys.argv[2]}).scripts[0]
        print(run.status, run.fast_path)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(both.hooks_dir), str(both.out)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout.split()) == (0, ["timeout", "True"]), done.stderr
    assert [process_dead(int(pid)) for pid in (marks / "escaped").read_text().split()] == [True]
