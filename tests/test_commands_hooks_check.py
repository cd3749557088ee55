"""`vmhooks hooks check`: one line per problem, exit 1; exit 0 when clean."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import NOBODY, LinkedRoot

from vmhooks.cli import main

MakeHook = Callable[..., Path]
VMHOOKS_BIN = Path(sys.executable).parent / "vmhooks"


@pytest.fixture
def check(hooks_dir: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[], tuple[int, list[str]]]:
    def run() -> tuple[int, list[str]]:
        code = main(["hooks", "check", "--hooks-dir", str(hooks_dir)])
        return code, capsys.readouterr().out.splitlines()

    return run


def clean_tree(make_hook: MakeHook) -> None:
    make_hook("before_vm_start", "10_sh", "echo ok >&2\n")
    make_hook("before_vm_start", "20_py", """
        import hooking
        doc = hooking.read_domxml()
        d = {}
        if "k" in d:
            for key, value in d.items():
                hooking.log(key)
        hooking.write_domxml(doc)
    """, lang="python")
    make_hook("after_get_caps", "10_json", "import hooking\nhooking.write_json(hooking.read_json())\n", lang="python")
    make_hook("after_vm_start", ".hidden_notes", "not a script at all", mode=0o644)


def test_clean_tree(make_hook: MakeHook, hooks_dir: Path, check: Callable[[], tuple[int, list[str]]]) -> None:
    clean_tree(make_hook)
    code, lines = check()
    assert code == 0
    assert lines == [f"{hooks_dir}: no problems found"]


def test_empty_tree_is_clean(hooks_dir: Path, check: Callable[[], tuple[int, list[str]]]) -> None:
    assert check() == (0, [f"{hooks_dir}: no problems found"])


def test_missing_tree_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hooks", "check", "--hooks-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _break_py(body: str) -> Callable[[MakeHook, Path], Path]:
    return lambda make_hook, root: make_hook("before_vm_start", "10_py", body, lang="python")


def _file_in_root(make_hook: MakeHook, root: Path) -> Path:
    path = root / "stray"
    path.write_text("#!/bin/sh\n")
    os.chmod(path, 0o755)
    return path


def _subdir(make_hook: MakeHook, root: Path) -> Path:
    make_hook("before_vm_start", "10_ok", "exit 0\n")
    path = root / "before_vm_start" / "20_sub"
    path.mkdir()
    return path


def _dangling(make_hook: MakeHook, root: Path) -> Path:
    make_hook("before_vm_start", "10_ok", "exit 0\n")
    path = root / "before_vm_start" / "20_link"
    os.symlink(root / "nowhere", path)
    return path


def _no_shebang(make_hook: MakeHook, root: Path) -> Path:
    path = make_hook("before_vm_start", "10_x", "exit 0\n")
    path.write_text("echo no shebang\n")
    return path


def _foreign(make_hook: MakeHook, root: Path) -> Path:
    path = make_hook("before_vm_start", "10_x", "exit 0\n")
    os.chown(path, 65534, -1)
    return path


def _unknown_point(make_hook: MakeHook, root: Path) -> Path:
    make_hook("before_VM_migrate_source", "10_x", "exit 0\n", mode=0o777)  # not even looked into
    return root / "before_VM_migrate_source"


def _misspelt_point(make_hook: MakeHook, root: Path) -> Path:
    make_hook("before_vm_strat", "10_x", "exit 0\n")
    return root / "before_vm_strat"


PROBLEMS = {
    "unknown point": (_unknown_point, "did you mean 'before_vm_migrate_source'"),
    "misspelt point": (_misspelt_point, "unknown hook point 'before_vm_strat'"),
    "not executable": (lambda mh, root: mh("before_vm_start", "10_x", "exit 0\n", mode=0o644), "not executable"),
    "mode 775": (lambda mh, root: mh("before_vm_start", "10_x", "exit 0\n", mode=0o775), "unsafe, the agent refuses it: writable by group or others (mode 0775)"),
    "mode 757": (lambda mh, root: mh("before_vm_start", "10_x", "exit 0\n", mode=0o757), "writable by group or others (mode 0757)"),
    "foreign owner": (_foreign, "owned by uid 65534"),
    "no shebang": (_no_shebang, "no '#!' line"),
    "py syntax": (_break_py("print 'python 2'\n"), "does not compile under Python 3"),
    "py except": (_break_py("try:\n    pass\nexcept Exception, e:\n    pass\n"), "does not compile"),
    "has_key": (_break_py("d = {}\nif d.has_key('x'):\n    pass\n"), "uses .has_key()"),
    "iteritems": (_break_py("d = {}\nfor k, v in d.iteritems():\n    pass\n"), "uses .iteritems()"),
    "xrange": (_break_py("for i in xrange(3):\n    pass\n"), "uses xrange()"),
    "file in root": (_file_in_root, "not a directory"),
    "subdirectory": (_subdir, "subdirectory: never entered"),
    "dangling": (_dangling, "dangling symlink"),
}


@pytest.mark.parametrize("kind", sorted(PROBLEMS))
def test_each_problem_is_one_line(
    make_hook: MakeHook, hooks_dir: Path, check: Callable[[], tuple[int, list[str]]], kind: str
) -> None:
    clean_tree(make_hook)  # problems are found among sound scripts
    make, phrase = PROBLEMS[kind]
    path = make(make_hook, hooks_dir)
    code, lines = check()
    assert code == 1
    assert len(lines) == 1, lines
    assert phrase in lines[0]
    assert lines[0].startswith(str(path))


def test_python_problems_give_the_line(make_hook: MakeHook, check: Callable[[], tuple[int, list[str]]]) -> None:
    path = make_hook("before_vm_start", "10_py", "import os\n\nif {}.has_key('a'):\n    pass\n", lang="python")
    code, lines = check()
    # the shebang is line 1, so `has_key` is on line 4
    assert (code, lines) == (1, [f"{path}:4: uses .has_key(), which Python 3 does not have"])


def test_py2_idioms_in_shell_scripts_are_not_flagged(
    make_hook: MakeHook, hooks_dir: Path, check: Callable[[], tuple[int, list[str]]]
) -> None:
    make_hook("before_vm_start", "10_sh", "echo 'd.has_key(x) d.iteritems() print x'\n")
    assert check()[0] == 0


def test_py_suffix_is_checked_whatever_the_shebang(
    make_hook: MakeHook, check: Callable[[], tuple[int, list[str]]], hooks_dir: Path
) -> None:
    path = hooks_dir / "before_vm_start" / "10_x.py"
    make_hook("before_vm_start", "10_x.py", "exit 0\n")
    path.write_text("#!/usr/bin/env interp\nprint 'x'\n")
    code, lines = check()
    assert code == 1 and any("does not compile" in line for line in lines)
    assert f"{path}: its interpreter interp does not exist on this host" in lines


def test_several_problems_one_line_each(
    make_hook: MakeHook, hooks_dir: Path, check: Callable[[], tuple[int, list[str]]]
) -> None:
    clean_tree(make_hook)
    make_hook("before_VM_migrate_source", "10_x", "exit 0\n")
    make_hook("after_vm_start", "10_noexec", "exit 0\n", mode=0o644)
    make_hook("after_vm_start", "20_open", "exit 0\n", mode=0o757)
    make_hook("after_vm_start", "30_py", "x = {}\nx.iteritems()\nx.has_key(1)\n", lang="python")
    no_shebang = make_hook("after_vm_pause", "10_bare", "")
    no_shebang.write_text("true\n")
    code, lines = check()
    assert code == 1
    assert len(lines) == 6, lines
    joined = "\n".join(lines)
    for phrase in ("before_VM_migrate_source: unknown hook point", "10_noexec: not executable",
                   "20_open: unsafe", "30_py:3: uses .iteritems()", "30_py:4: uses .has_key()",
                   "10_bare: no '#!' line"):
        assert phrase in joined, phrase


def test_fixing_the_problems_makes_it_clean(
    make_hook: MakeHook, hooks_dir: Path, check: Callable[[], tuple[int, list[str]]]
) -> None:
    path = make_hook("after_vm_start", "10_x", "exit 0\n", mode=0o757)
    assert check()[0] == 1
    os.chmod(path, 0o755)
    assert check()[0] == 0


@pytest.mark.skipif(not VMHOOKS_BIN.exists(), reason="the vmhooks console script is not installed")
def test_real_command(make_hook: MakeHook, hooks_dir: Path) -> None:
    make_hook("before_VM_migrate_source", "10_x", "exit 0\n")
    done = subprocess.run(
        [str(VMHOOKS_BIN), "hooks", "check", "--hooks-dir", str(hooks_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout.count("\n") == 1 and "before_VM_migrate_source" in done.stdout


# --- interpreters and imports -------------------------------------------------------


def test_upstream_vdsm_imports_and_sibling_helpers_resolve(
    make_hook: MakeHook, check: Callable[[], tuple[int, list[str]]]
) -> None:
    """What upstream hooks import (the vdsm package on the hooks' path, a
    helper module installed beside the hook, non-executable) is no problem."""
    helper = make_hook("after_get_stats", "site_utils.py", "PROBE = 1\n", lang="python", mode=0o644)
    make_hook("after_get_stats", "10_site", """
        import json
        import xml.dom.minidom
        import hooking
        import site_utils
        import vdsm.network.netconfpersistence as persist_net
        from vdsm.common.units import GiB
        from vdsm.storage import qemuimg
        from vdsm.network.link.bond import Bond
        try:
            import not_installed_anywhere
        except ImportError:
            pass
    """, lang="python")
    assert check() == (0, [f"{helper.parent.parent}: no problems found"])


def test_each_missing_import_is_one_line(make_hook: MakeHook, check: Callable[[], tuple[int, list[str]]]) -> None:
    path = make_hook("before_vm_start", "10_site", """
        import os.path
        import not_installed_anywhere
        from vdsm.common import units
        from vdsm.no_such_module import thing
        import vdsm.network.no_such_module as alias
    """, lang="python")
    code, lines = check()
    assert code == 1
    assert lines == [
        f"{path}: import not_installed_anywhere: not found by its interpreter with the hooks' PYTHONPATH",
        f"{path}: import vdsm.no_such_module: not found by its interpreter with the hooks' PYTHONPATH",
        f"{path}: import vdsm.network.no_such_module: not found by its interpreter with the hooks' PYTHONPATH",
    ]


def test_imports_follow_the_shebangs_path_flags(make_hook: MakeHook, check: Callable[[], tuple[int, list[str]]]) -> None:
    """`python3 -E` ignores PYTHONPATH: the hook will not find what hooklib/ holds."""
    path = make_hook("before_vm_start", "10_isolated", "import vmhooks_catalogue\n", lang="python")
    path.write_text(f"#!{sys.executable} -E\nimport vmhooks_catalogue\n")
    code, lines = check()
    assert (code, lines) == (1, [f"{path}: import vmhooks_catalogue: not found by its interpreter with the hooks' PYTHONPATH"])
    path.write_text(f"#!{sys.executable}\nimport vmhooks_catalogue\n")
    assert check()[0] == 0


def test_a_missing_interpreter_is_reported(make_hook: MakeHook, check: Callable[[], tuple[int, list[str]]]) -> None:
    old = make_hook("before_vm_start", "10_old", "import os\n")
    old.write_text("#!/usr/bin/python2.7\nimport os\n")
    env = make_hook("before_vm_start", "20_env", "true\n")
    env.write_text("#!/usr/bin/env -S no-such-interpreter -u\n")
    code, lines = check()
    assert (code, lines) == (1, [
        f"{old}: its interpreter /usr/bin/python2.7 does not exist on this host",
        f"{env}: its interpreter no-such-interpreter does not exist on this host",
    ])  # fmt: skip


def test_hooks_pythonpath_extends_what_resolves(
    make_hook: MakeHook, hooks_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    site.mkdir(mode=0o755)
    (site / "sitelib.py").write_text("VALUE = 'from site'\n")
    make_hook("after_get_caps", "10_site", "import hooking, sitelib\nhooking.write_json({'v': sitelib.VALUE})\n", lang="python")
    assert main(["hooks", "check", "--hooks-dir", str(hooks_dir)]) == 1
    assert "import sitelib: not found" in capsys.readouterr().out
    assert main(["hooks", "check", "--hooks-dir", str(hooks_dir), "--hooks-pythonpath", str(site)]) == 0
    capsys.readouterr()
    assert main(["hooks", "run", "after_get_caps", "--hooks-dir", str(hooks_dir), "--hooks-pythonpath", str(site),
                 "--output", "payload"]) == 0  # fmt: skip
    assert '"v": "from site"' in capsys.readouterr().out
    os.chmod(site, 0o777)
    assert main(["hooks", "check", "--hooks-dir", str(hooks_dir), "--hooks-pythonpath", str(site)]) == 2
    message = f"is unsafe, hooks would import from it: directory {site} is writable by group or others"
    assert message in capsys.readouterr().err


def test_the_interpreter_of_an_unsafe_script_is_not_started(
    make_hook: MakeHook, tmp_path: Path, check: Callable[[], tuple[int, list[str]]]
) -> None:
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir(mode=0o755)
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path / 'started'}\n")
    fake.chmod(0o755)
    script = make_hook("before_vm_start", "10_x", "import os\n", mode=0o775)
    script.write_text(f"#!{fake}\nimport os\n")
    assert any("unsafe" in line for line in check()[1])
    assert not (tmp_path / "started").exists()
    script.chmod(0o755)
    lines = check()[1]
    assert (tmp_path / "started").exists()
    assert lines == [f"{script}: its interpreter could not be asked which of its imports it finds"]


def test_a_root_through_a_link_others_can_repoint_is_reported(
    linked_root: LinkedRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["hooks", "check", "--hooks-dir", str(linked_root.hooks_dir)])
    lines = capsys.readouterr().out.splitlines()
    if linked_root.holder.stat().st_mode & stat.S_ISVTX:
        assert (code, lines) == (0, [f"{linked_root.hooks_dir}: no problems found"])
    else:
        assert code == 1
        assert lines[0] == (
            f"{linked_root.hooks_dir}: unsafe, the agent refuses every script under it: "
            f"directory {linked_root.holder} is owned by uid {NOBODY}, not root or the agent's user"
        )
        assert all(str(linked_root.holder) in line for line in lines)
