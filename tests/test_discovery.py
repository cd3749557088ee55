"""Finding a point's scripts, the safety checks, the sha256 inventory."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmhooks import discovery
from vmhooks.discovery import find_scripts, inventory, point_dir, unsafe_directory_reason, unsafe_reason
from vmhooks.errors import UnknownPointError

POINT = "before_vm_start"
from conftest import NOBODY, as_nobody


def names(hooks_dir: Path, point: str = POINT) -> list[str]:
    return [script.name for script in find_scripts(hooks_dir, point)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def public_hooks_dir() -> Iterator[Path]:
    """A hooks root that uid 65534 can reach (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="vmhooks-test-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


# --- which entries are scripts ---------------------------------------------


def test_code_point_order(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    for name in ("a", "Z", "9_b", "10_a", "_x", "B"):
        make_hook(POINT, name, "exit 0\n")
    assert names(hooks_dir) == ["10_a", "9_b", "B", "Z", "_x", "a"]


def test_scripts_carry_their_path(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    path = make_hook(POINT, "10_a", "exit 0\n")
    [script] = find_scripts(hooks_dir, POINT)
    assert script.path == path


def test_hidden_files_skipped(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    make_hook(POINT, ".hidden", "exit 0\n")
    make_hook(POINT, ".10_also_hidden", "exit 0\n")
    make_hook(POINT, "20_visible", "exit 0\n")
    assert names(hooks_dir) == ["20_visible"]


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o444])
def test_non_executable_skipped(make_hook: Callable[..., Path], hooks_dir: Path, mode: int) -> None:
    make_hook(POINT, "10_plain", "exit 0\n", mode=mode)
    make_hook(POINT, "20_exec", "exit 0\n")
    assert names(hooks_dir) == ["20_exec"]


def test_dangling_symlink_skipped(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    make_hook(POINT, "20_real", "exit 0\n")
    os.symlink(hooks_dir / "nowhere", hooks_dir / POINT / "10_dangling")
    assert names(hooks_dir) == ["20_real"]


def test_symlink_to_executable_followed(hooks_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.sh"
    target.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(target, 0o755)
    (hooks_dir / POINT).mkdir()
    link = hooks_dir / POINT / "10_link"
    os.symlink(target, link)
    [script] = find_scripts(hooks_dir, POINT)
    assert script.name == "10_link"
    assert script.path == link  # named by the link, run through it


def test_symlink_to_non_executable_skipped(hooks_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "plain.sh"
    target.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(target, 0o644)
    (hooks_dir / POINT).mkdir()
    os.symlink(target, hooks_dir / POINT / "10_link")
    assert names(hooks_dir) == []


def test_subdirectories_never_entered(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    make_hook(POINT, "30_top", "exit 0\n")
    sub = hooks_dir / POINT / "10_sub"
    sub.mkdir(mode=0o755)  # a directory is "executable" (searchable): still not a script
    inner = sub / "inner"
    inner.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(inner, 0o755)
    os.symlink(sub, hooks_dir / POINT / "20_link_to_dir")
    assert names(hooks_dir) == ["30_top"]


def test_fifo_is_not_a_script(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    make_hook(POINT, "20_real", "exit 0\n")
    os.mkfifo(hooks_dir / POINT / "10_fifo", 0o755)
    assert names(hooks_dir) == ["20_real"]


def test_missing_point_dir_has_no_scripts(hooks_dir: Path) -> None:
    assert find_scripts(hooks_dir, POINT) == []
    assert find_scripts(hooks_dir / "no-such-root", POINT) == []


def test_point_that_is_a_file_has_no_scripts(hooks_dir: Path) -> None:
    (hooks_dir / POINT).write_text("#!/bin/sh\n")
    os.chmod(hooks_dir / POINT, 0o755)
    assert find_scripts(hooks_dir, POINT) == []


@pytest.mark.parametrize(
    "point", ["..", "../etc", "/etc", "before_vm_start/../../x", "a/b", "", "a\0b"]
)
def test_point_names_that_leave_the_root_refused(hooks_dir: Path, point: str) -> None:
    with pytest.raises(ValueError):  # hook-points.md: a ValueError-class error
        find_scripts(hooks_dir, point)
    with pytest.raises(UnknownPointError):
        point_dir(hooks_dir, point)


def test_absolute_point_name_does_not_escape(tmp_path: Path, hooks_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    script = outside / "evil"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    with pytest.raises(UnknownPointError):
        find_scripts(hooks_dir, str(outside))


# --- safety -----------------------------------------------------------------


def test_safe_script_has_no_reason(make_hook: Callable[..., Path]) -> None:
    assert unsafe_reason(make_hook(POINT, "10_ok", "exit 0\n")) is None
    assert unsafe_reason(make_hook(POINT, "20_ok", "exit 0\n", mode=0o700)) is None


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o765])
def test_group_or_other_writable_is_unsafe(make_hook: Callable[..., Path], mode: int) -> None:
    reason = unsafe_reason(make_hook(POINT, "10_w", "exit 0\n", mode=mode))
    assert reason is not None
    assert "writable by group or others" in reason
    assert f"{mode:04o}" in reason


def test_foreign_owner_is_unsafe(make_hook: Callable[..., Path]) -> None:
    path = make_hook(POINT, "10_foreign", "exit 0\n")
    os.chown(path, NOBODY, -1)
    reason = unsafe_reason(path)
    assert reason is not None and f"owned by uid {NOBODY}" in reason


def test_trusted_uids_can_be_given(make_hook: Callable[..., Path]) -> None:
    path = make_hook(POINT, "10_foreign", "exit 0\n")
    os.chown(path, NOBODY, -1)
    assert unsafe_reason(path, frozenset({NOBODY, 0})) is None  # root still owns the directories
    os.chown(path, 0, -1)
    assert "owned by uid 0" in (unsafe_reason(path, frozenset({NOBODY})) or "")


def test_writable_directory_is_unsafe(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    path = make_hook(POINT, "10_ok", "exit 0\n")
    os.chmod(hooks_dir / POINT, 0o777)
    reason = unsafe_reason(path)
    assert reason == f"directory {hooks_dir / POINT} is writable by group or others (mode 0777)"
    os.chmod(hooks_dir / POINT, 0o1777)  # sticky: others cannot swap our file
    assert unsafe_reason(path) is None


def test_missing_file_is_unsafe(hooks_dir: Path) -> None:
    reason = unsafe_reason(hooks_dir / POINT / "gone")
    assert reason is not None and "cannot stat" in reason


# --- inventory -----------------------------------------------------------------


def test_inventory_shape_and_checksums(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    a = make_hook("before_vm_start", "10_a", "echo a\n")
    b = make_hook("before_vm_start", "20_b", "echo b\n")
    c = make_hook("after_vm_destroy", "50_c", "print('c')\n", lang="python")
    assert inventory(hooks_dir) == {
        "before_vm_start": {"10_a": {"checksum": sha(a)}, "20_b": {"checksum": sha(b)}},
        "after_vm_destroy": {"50_c": {"checksum": sha(c)}},
    }
    assert sha(a) != sha(b)
    assert len(sha(a)) == 64


def test_checksums_are_read_once_and_follow_every_change(
    make_hook: Callable[..., Path], hooks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = make_hook("before_vm_start", "10_a", "echo a\n")
    reads: list[Path] = []
    real = discovery._hash_file
    monkeypatch.setattr(discovery, "_hash_file", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(discovery, "RACY_SECONDS", 0.05)  # not 2 s: a short test; a tick is 10 ms at most
    first = inventory(hooks_dir)["before_vm_start"]["10_a"]["checksum"]
    inventory(hooks_dir)
    assert len(reads) == 2  # just written: a change within the same clock tick would not move ctime
    time.sleep(0.1)
    inventory(hooks_dir)
    inventory(hooks_dir)
    assert len(reads) == 3  # polled capabilities read nothing again
    stat = hook.stat()
    hook.write_text("echo b\n")  # same size; and the same mtime, as a fast or careful writer leaves it
    os.utime(hook, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inventory(hooks_dir)["before_vm_start"]["10_a"]["checksum"] == sha(hook) != first
    assert len(reads) == 4


def test_inventory_leaves_out_dirs_without_scripts(
    make_hook: Callable[..., Path], hooks_dir: Path
) -> None:
    make_hook("before_vm_start", "10_a", "exit 0\n")
    make_hook("after_vm_start", "10_plain", "exit 0\n", mode=0o644)  # not executable
    make_hook("after_vm_pause", ".hidden", "exit 0\n")
    (hooks_dir / "after_vm_cont").mkdir()  # empty
    (hooks_dir / "stray_file").write_text("x")  # a file in the root
    os.chmod(hooks_dir / "stray_file", 0o755)
    hidden_dir = hooks_dir / ".git"
    hidden_dir.mkdir()
    (hidden_dir / "x").write_text("#!/bin/sh\n")
    os.chmod(hidden_dir / "x", 0o755)
    assert list(inventory(hooks_dir)) == ["before_vm_start"]


def test_inventory_follows_the_same_rules_as_discovery(
    make_hook: Callable[..., Path], hooks_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_text("#!/bin/sh\necho target\n")
    os.chmod(target, 0o755)
    make_hook(POINT, "20_real", "exit 0\n")
    os.symlink(target, hooks_dir / POINT / "10_link")
    os.symlink(tmp_path / "nowhere", hooks_dir / POINT / "30_dangling")
    (hooks_dir / POINT / "40_subdir").mkdir()
    found = inventory(hooks_dir)[POINT]
    assert list(found) == ["10_link", "20_real"]
    assert found["10_link"]["checksum"] == sha(target)


def test_inventory_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert inventory(tmp_path / "nope") == {}


def test_inventory_empty_checksum_where_unreadable(public_hooks_dir: Path) -> None:
    # Executable by others but not readable: the agent (here uid 65534) finds
    # it runnable yet cannot hash it.
    point = public_hooks_dir / POINT
    point.mkdir(mode=0o755)
    os.chmod(point, 0o755)
    secret = point / "10_secret"
    secret.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(secret, 0o711)
    readable = point / "20_open"
    readable.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(readable, 0o755)
    if os.geteuid() == 0:
        found = as_nobody(lambda: inventory(public_hooks_dir))
    else:
        os.chmod(secret, 0o111)
        found = inventory(public_hooks_dir)
    assert found == {POINT: {"10_secret": {"checksum": ""}, "20_open": {"checksum": sha(readable)}}}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_inventory_skips_point_dirs_it_cannot_list(public_hooks_dir: Path) -> None:
    # A point directory the agent cannot read has no scripts it could run:
    # it is left out, and the other points are still reported.
    for point, mode in (("before_vm_start", 0o700), ("after_vm_start", 0o755)):
        directory = public_hooks_dir / point
        directory.mkdir()
        os.chmod(directory, mode)
        script = directory / "10_x"
        script.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(script, 0o755)
    found = as_nobody(lambda: inventory(public_hooks_dir))
    assert list(found) == ["after_vm_start"]


def test_directory_owned_by_someone_else_is_unsafe(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    # A 0755 directory its owner can still rename entries in: the owner could
    # swap a root-owned script between the check and the exec.
    path = make_hook(POINT, "10_ok", "exit 0\n")
    os.chown(hooks_dir / POINT, NOBODY, -1)
    assert unsafe_reason(path) == f"directory {hooks_dir / POINT} is owned by uid {NOBODY}, not root or the agent's user"
    os.chown(hooks_dir / POINT, 0, -1)
    os.chown(hooks_dir, NOBODY, -1)  # an ancestor counts as much
    assert unsafe_reason(path) == f"directory {hooks_dir} is owned by uid {NOBODY}, not root or the agent's user"


def test_symlink_target_directory_counts(make_hook: Callable[..., Path], hooks_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    target = elsewhere / "real"
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(0o755)
    (hooks_dir / POINT).mkdir(mode=0o755, exist_ok=True)
    link = hooks_dir / POINT / "10_link"
    link.symlink_to(target)
    assert unsafe_reason(link) is None
    os.chmod(elsewhere, 0o777)
    assert unsafe_reason(link) == f"directory {elsewhere} is writable by group or others (mode 0777)"


def test_inventory_skips_names_no_point_can_have(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    make_hook(POINT, "10_ok", "exit 0\n")
    odd = hooks_dir / "a..b"
    odd.mkdir()
    (odd / "x").write_text("#!/bin/sh\n")
    (odd / "x").chmod(0o755)
    assert list(inventory(hooks_dir)) == [POINT]


# --- the path as given, symlinks and all (issue 8, item 2) ---------------------------


@pytest.fixture
def tree(public_hooks_dir: Path) -> Path:
    """public/real/before_vm_start/10_x, all root-owned 0755."""
    point = public_hooks_dir / "real" / POINT
    point.mkdir(parents=True)
    for directory in (point.parent, point):
        os.chmod(directory, 0o755)
    (point / "10_x").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(point / "10_x", 0o755)
    return public_hooks_dir


def test_a_directory_holding_a_link_on_the_way_counts(tree: Path) -> None:
    holder = tree / "holder"
    holder.mkdir(mode=0o755)
    (holder / "hooks").symlink_to(tree / "real")
    script = holder / "hooks" / POINT / "10_x"
    assert unsafe_reason(script) is None
    os.chown(holder, NOBODY, NOBODY)  # nobody could re-point the link: the target's safety is moot
    assert unsafe_reason(script) == f"directory {holder} is owned by uid {NOBODY}, not root or the agent's user"
    assert unsafe_directory_reason(holder / "hooks") == unsafe_reason(script)


def test_in_a_sticky_directory_the_links_owner_counts(tree: Path) -> None:
    shared = tree / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    link = shared / "hooks"
    link.symlink_to(tree / "real")
    script = link / POINT / "10_x"
    assert unsafe_reason(script) is None  # root's link: others cannot replace it
    os.lchown(link, NOBODY, NOBODY)
    assert unsafe_reason(script) == f"{link} is owned by uid {NOBODY} in {shared}, which others can write"


def test_every_link_of_a_chain_and_every_target_directory_counts(tree: Path) -> None:
    # hop1/a -> ../hop2/b (relative, through ..) -> <tree>/real (absolute)
    for hop in ("hop1", "hop2"):
        (tree / hop).mkdir(mode=0o755)
    (tree / "hop2" / "b").symlink_to(tree / "real")
    (tree / "hop1" / "a").symlink_to("../hop2/b")
    script = tree / "hop1" / "a" / POINT / "10_x"
    assert script.exists()
    assert unsafe_reason(script) is None
    os.chown(tree / "hop2", NOBODY, NOBODY)
    assert unsafe_reason(script) == f"directory {tree / 'hop2'} is owned by uid {NOBODY}, not root or the agent's user"
    os.chown(tree / "hop2", 0, 0)
    os.chmod(tree / "real" / POINT, 0o777)  # the last target
    assert unsafe_reason(script) == f"directory {tree / 'real' / POINT} is writable by group or others (mode 0777)"


def test_a_link_to_a_script_is_checked_where_it_leads(tree: Path) -> None:
    elsewhere = tree / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    target = elsewhere / "script"
    target.write_text("#!/bin/sh\n")
    os.chmod(target, 0o755)
    link = tree / "real" / POINT / "20_link"
    link.symlink_to("../../elsewhere/script")
    assert unsafe_reason(link) is None
    os.chown(target, NOBODY, NOBODY)
    assert unsafe_reason(link) == f"owned by uid {NOBODY}, not root or the agent's user"


def test_a_link_loop_is_unsafe(tree: Path) -> None:
    (tree / "loop").symlink_to(tree / "loop")
    reason = unsafe_reason(tree / "loop" / POINT / "10_x")
    assert reason is not None and "Too many levels of symbolic links" in reason


def test_a_relative_path_counts_from_the_working_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    script = Path("real") / POINT / "10_x"
    assert unsafe_reason(script) is None
    os.chmod(tree, 0o777)  # the working directory itself is on the way
    assert unsafe_reason(script) == f"directory {tree} is writable by group or others (mode 0777)"


# --- what a hook loads from beside itself ---------------------------------------


def _beside(hooks_dir: Path, name: str, mode: int = 0o644, owner: int | None = None) -> Path:
    path = hooks_dir / "before_vm_start" / name
    path.write_text("VALUE = 'planted'\n")
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, -1)
    return path


@pytest.mark.parametrize("mode, owner", [(0o666, None), (0o664, None), (0o644, NOBODY)])
def test_a_module_others_can_change_beside_a_hook_makes_it_unsafe(
    make_hook: Callable[..., Path], hooks_dir: Path, mode: int, owner: int | None
) -> None:
    hook = make_hook("before_vm_start", "50_hook", "import helper\n", lang="python")
    helper = _beside(hooks_dir, "helper.py", mode, owner)
    reason = unsafe_reason(hook)
    assert reason is not None and str(helper) in reason


def test_trusted_modules_and_data_beside_a_hook_are_fine(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    hook = make_hook("before_vm_start", "50_hook", "import helper\n", lang="python")
    _beside(hooks_dir, "helper.py")
    cache = hooks_dir / "before_vm_start" / "__pycache__"
    cache.mkdir(mode=0o755)
    (cache / "helper.cpython-311.pyc").write_bytes(b"")
    assert unsafe_reason(hook) is None


def test_bytecode_cache_others_can_write_makes_it_unsafe(make_hook: Callable[..., Path], hooks_dir: Path) -> None:
    hook = make_hook("before_vm_start", "50_hook", "import helper\n", lang="python")
    cache = hooks_dir / "before_vm_start" / "__pycache__"
    cache.mkdir()
    os.chmod(cache, 0o777)
    assert "__pycache__" in (unsafe_reason(hook) or "")
    os.chmod(cache, 0o755)
    planted = cache / "helper.cpython-311.pyc"
    planted.write_bytes(b"")
    os.chown(planted, NOBODY, -1)
    assert "helper.cpython-311.pyc" in (unsafe_reason(hook) or "")


def test_a_link_beside_a_hook_into_a_shared_place_makes_it_unsafe(
    make_hook: Callable[..., Path], hooks_dir: Path, tmp_path: Path
) -> None:
    hook = make_hook("before_vm_start", "50_hook", "import helper\n", lang="python")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # not sticky: anyone can replace what is in it
    (shared / "helper.py").write_text("VALUE = 1\n")
    (hooks_dir / "before_vm_start" / "helper.py").symlink_to(shared / "helper.py")
    assert "leads to something untrusted" in (unsafe_reason(hook) or "")


def test_an_unsafe_script_is_named_once_not_blamed_on_its_neighbours(
    make_hook: Callable[..., Path],
) -> None:
    safe = make_hook("before_vm_start", "10_safe", "true\n")
    unsafe = make_hook("before_vm_start", "20_unsafe", "true\n")
    os.chmod(unsafe, 0o777)
    assert unsafe_reason(safe) is None
    assert "writable by group or others" in (unsafe_reason(unsafe) or "")
