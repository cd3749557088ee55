"""Finding a point's scripts, checking that they are safe to run, and the
sha256 inventory the host reports with its capabilities."""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple

from vmhooks.errors import UnknownPointError

log = logging.getLogger("vmhooks.discovery")

MAX_SYMLINKS = 40  # the kernel's limit on links followed in one lookup
# A hook's directory is walked (packages, __pycache__) this deep and this far
# at most: past that it cannot be vouched for, and is refused.
MAX_CONTENT_DEPTH = 4
MAX_CONTENT_ENTRIES = 4096


class Script(NamedTuple):
    name: str
    path: Path


def point_dir(hooks_dir: Path, point: str) -> Path:
    # Refuse names that could leave the hooks root, whatever the points table says.
    if not point or os.path.isabs(point) or ".." in point or "/" in point or "\0" in point:
        raise UnknownPointError(f"invalid hook point name {point!r}")
    return hooks_dir / point


def find_scripts(hooks_dir: Path, point: str) -> list[Script]:
    """The runnable scripts of `point`, in run order (code-point sort of names).

    Runnable: not hidden, a regular file after following symlinks (dangling
    links are skipped), executable. Subdirectories are never entered.
    """
    directory = point_dir(hooks_dir, point)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        # As upstream: scripts the agent cannot list cannot run. Say so.
        log.warning("hook directory %s cannot be listed: its scripts do not run", directory)
        return []
    scripts = []
    for name in sorted(names):
        if name.startswith("."):
            continue
        path = directory / name
        if _is_script(path):
            scripts.append(Script(name, path))
    return scripts


def _is_script(path: Path | str) -> bool:
    """A regular file after following symlinks (dangling ones are not), executable."""
    try:
        st = os.stat(path)
    except OSError:  # dangling symlink, or vanished meanwhile
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


class Resolved(NamedTuple):
    """Where a path leads, checked: `reason` says why it cannot be trusted."""

    real: str  # the path with every symlink resolved (as far as the walk got)
    reason: str | None
    shared: bool = False  # `real` is a sticky directory others can write


def unsafe_reason(
    path: Path, trusted_uids: frozenset[int] | None = None, seen: dict[str, Resolved] | None = None
) -> str | None:
    """Why running `path` would let someone else run code as us, or None.

    The path is checked as given, the way the kernel resolves it when the
    runner executes it: every directory it looks a name up in, from / (or the
    working directory) through every symlink met on the way (the directories
    that hold the links, and those of their targets), must be one that nobody
    untrusted can change, and the file must be owned by root or the agent's
    user and writable by nobody else. Whoever can change any of these could
    swap the script, even between two scripts of one chain; when nobody can,
    the path leads to the file checked here for as long as the chain runs.

    `seen` caches the verdict on each directory across the scripts of a chain.
    """
    if trusted_uids is None:
        trusted_uids = frozenset({0, os.geteuid()})
    text = str(path)
    parent, slash, name = text.rpartition("/")
    if not slash:
        parent = "."
    if name in ("", ".", ".."):
        return f"cannot stat: {os.strerror(errno.EISDIR)}"
    directory = (seen or {}).get(parent) or resolve(parent or "/", trusted_uids, directory=True)
    if seen is not None:
        seen[parent] = directory
    if directory.reason:
        return directory.reason
    # Nobody untrusted can change the directory, so what it holds stays: go on from its real path.
    script = resolve(name, trusted_uids, directory=False, start=directory)
    if script.reason:
        return script.reason
    # What the hook loads from beside itself (Python puts the real directory
    # of the script first on sys.path; shell hooks source "$(dirname "$0")/x")
    # is as much its code as the script: both directories must hold nothing
    # that someone untrusted can change.
    for holder in {directory.real, os.path.dirname(script.real)}:
        key = "contents:" + holder
        if seen is None or key not in seen:
            # The point directory's scripts are checked each on its own, as above.
            verdict = Resolved(holder, contents_reason(holder, trusted_uids, skip_scripts=holder == directory.real))
            if seen is not None:
                seen[key] = verdict
        else:
            verdict = seen[key]
        if verdict.reason:
            return verdict.reason
    return None


def contents_reason(
    directory: str, trusted_uids: frozenset[int] | None = None, skip_scripts: bool = False
) -> str | None:
    """Why something in `directory` (a module, a package, cached bytecode, a
    file a hook sources or reads; links followed and checked as paths are)
    could be changed by someone untrusted, or None. `directory` itself must
    already be trusted. `skip_scripts`: leave out the scripts a point
    directory runs (the caller checks each of them)."""
    if trusted_uids is None:
        trusted_uids = frozenset({0, os.geteuid()})
    budget = [MAX_CONTENT_ENTRIES]
    try:
        return _contents_reason(directory, trusted_uids, MAX_CONTENT_DEPTH, budget, skip_scripts)
    except OSError as exc:
        return f"cannot list {directory}: {exc.strerror}"


def _contents_reason(
    directory: str, trusted_uids: frozenset[int], depth: int, budget: list[int], skip_scripts: bool = False
) -> str | None:
    base = Resolved(directory, None, False)
    with os.scandir(directory) as entries:
        for entry in entries:
            if skip_scripts and not entry.name.startswith(".") and _is_script(entry.path):
                continue
            budget[0] -= 1
            if budget[0] < 0:
                return f"{directory} holds more than {MAX_CONTENT_ENTRIES} entries to verify"
            if entry.is_symlink():
                if not os.path.exists(entry.path):
                    # Dangling: harmless while nobody untrusted can create what it names.
                    where = os.path.dirname(os.path.join(directory, os.readlink(entry.path)))
                    target = resolve(where, trusted_uids, directory=True, start=base)
                else:
                    target = resolve(entry.name, trusted_uids, directory=False, start=base)
                if target.reason:
                    return f"{entry.path} leads to something untrusted: {target.reason}"
                continue
            st = entry.stat(follow_symlinks=False)
            reason = _entry_reason(entry.path, st, trusted_uids)
            if reason:
                return f"{entry.path} is beside a hook and {reason}" if not stat.S_ISDIR(st.st_mode) else reason
            if stat.S_ISDIR(st.st_mode):
                if depth == 0:
                    return f"{entry.path} is nested too deep beside a hook to verify"
                reason = _contents_reason(entry.path, trusted_uids, depth - 1, budget)
                if reason:
                    return reason
    return None


def unsafe_directory_reason(path: Path, trusted_uids: frozenset[int] | None = None) -> str | None:
    """Why someone untrusted could change what the directory `path` (as
    given, symlinks and all) holds, or None."""
    if trusted_uids is None:
        trusted_uids = frozenset({0, os.geteuid()})
    return resolve(str(path), trusted_uids, directory=True).reason


def resolve(path: str, trusted_uids: frozenset[int], directory: bool, start: Resolved | None = None) -> Resolved:
    """Follow `path` one name at a time as the kernel does, checking every
    entry met; relative paths start at `start` (a checked directory), else at
    the working directory."""
    try:
        return _resolve(path, trusted_uids, directory, start)
    except OSError as exc:  # the working directory or a link vanished meanwhile
        return Resolved(path, f"cannot stat {path}: {exc.strerror}")


def _resolve(path: str, trusted_uids: frozenset[int], directory: bool, start: Resolved | None) -> Resolved:
    if start is None or path.startswith("/"):
        if not path.startswith("/"):
            path = os.getcwd() + "/" + path  # a real path, whose directories are checked below
        root = os.lstat("/")
        start = Resolved("/", _entry_reason("/", root, trusted_uids), _is_shared(root))
        if start.reason:
            return start
    current, shared = start.real, start.shared
    pending = path.split("/")[::-1]
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)  # `current` is real: .. is its parent
            shared = _is_shared(os.lstat(current))
            continue
        entry = f"{current.rstrip('/')}/{name}"
        try:
            st = os.lstat(entry)
        except OSError as exc:
            return Resolved(entry, f"cannot stat {entry}: {exc.strerror}")
        if shared and st.st_uid not in trusted_uids:
            # A sticky directory others can write: an entry's owner can still replace it.
            return Resolved(entry, f"{entry} is owned by uid {st.st_uid} in {current}, which others can write")
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return Resolved(entry, f"cannot stat {entry}: {os.strerror(errno.ELOOP)}")
            target = os.readlink(entry)
            if target.startswith("/"):
                current, shared = "/", _is_shared(os.lstat("/"))
            pending.extend(target.split("/")[::-1])
            continue
        last = all(part in ("", ".") for part in pending)
        if (not last or directory) and not stat.S_ISDIR(st.st_mode):
            return Resolved(entry, f"cannot stat {entry}: {os.strerror(errno.ENOTDIR)}")
        reason = _entry_reason(entry, st, trusted_uids)
        if reason:
            return Resolved(entry, reason)
        current, shared = entry, _is_shared(st)
    return Resolved(current, None, shared)


def _is_shared(st: os.stat_result) -> bool:
    """A directory others can write, where only the sticky bit guards entries."""
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _entry_reason(entry: str, st: os.stat_result, trusted_uids: frozenset[int]) -> str | None:
    what = f"directory {entry} is " if stat.S_ISDIR(st.st_mode) else ""
    if st.st_uid not in trusted_uids:
        return f"{what}owned by uid {st.st_uid}, not root or the agent's user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return f"{what}writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


# sha256 by (device, inode, size, mtime, ctime): the inventory goes out with
# every Host.getCapabilities and console page, and hooks rarely change. Any
# write or chmod moves ctime, so a changed file is never served from here;
# but ctime moves by clock ticks on older kernels, so a file changed within
# RACY_SECONDS is read every time (git's "racily clean" rule).
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}
MAX_DIGESTS = 4096
RACY_SECONDS = 2.0


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's content; empty when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _hash_file(path)
        if digest and time.time() - st.st_ctime > RACY_SECONDS:
            if len(_DIGESTS) >= MAX_DIGESTS:
                _DIGESTS.clear()
            _DIGESTS[key] = digest
    return digest


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def inventory(hooks_dir: Path) -> dict[str, dict[str, dict[str, str]]]:
    """`{point: {script: {"checksum": hex}}}` for every directory that has scripts."""
    try:
        entries = sorted(os.listdir(hooks_dir))
    except OSError:
        return {}
    result: dict[str, dict[str, dict[str, str]]] = {}
    for point in entries:
        if point.startswith(".") or not (hooks_dir / point).is_dir():
            continue
        try:
            scripts = find_scripts(hooks_dir, point)
        except (OSError, UnknownPointError):  # unlistable, or a name we never run (`a..b`)
            continue
        if scripts:
            result[point] = {s.name: {"checksum": file_sha256(s.path)} for s in scripts}
    return result
