"""Finding a point's scripts, checking that they are safe to run, and the
sha256 inventory the host reports with its capabilities."""
from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import NamedTuple

from vmhooks.errors import UnknownPointError

log = logging.getLogger("vmhooks.discovery")


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
        try:
            st = os.stat(path)
        except OSError:  # dangling symlink, or vanished meanwhile
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            scripts.append(Script(name, path))
    return scripts


def unsafe_reason(
    path: Path, trusted_uids: frozenset[int] | None = None, seen: dict[Path, str | None] | None = None
) -> str | None:
    """Why running `path` would let someone else run code as us, or None.

    Anyone who can write the script, or rename it or any directory above it
    (up to /, and above a symlink's target too), can run code as the agent,
    so such scripts are refused. `seen` caches directory verdicts across the
    scripts of one chain.
    """
    if trusted_uids is None:
        trusted_uids = frozenset({0, os.geteuid()})
    if seen is None:
        seen = {}
    try:
        st = os.stat(path)
        directories = [path.parent]
        if os.path.islink(path):  # stat followed it: its target's directories count too
            directories.append(Path(os.path.realpath(path)).parent)
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if st.st_uid not in trusted_uids:
        return f"owned by uid {st.st_uid}, not root or the agent's user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    for directory in directories:
        if directory not in seen:
            seen[directory] = _directory_reason(directory, trusted_uids)
        if seen[directory]:
            return seen[directory]
    return None


def _directory_reason(directory: Path, trusted_uids: frozenset[int]) -> str | None:
    """Why someone untrusted could swap what `directory` holds, or None."""
    try:
        real = Path(os.path.realpath(directory))
        for ancestor in (real, *real.parents):
            st = os.stat(ancestor)
            if st.st_uid not in trusted_uids:
                return f"directory {ancestor} is owned by uid {st.st_uid}, not root or the agent's user"
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
                return f"directory {ancestor} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    except OSError as exc:
        return f"cannot stat directory {directory}: {exc.strerror}"
    return None


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's content; empty when it cannot be read."""
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
