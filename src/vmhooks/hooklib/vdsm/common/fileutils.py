"""`vdsm.common.fileutils`: small file operations that tolerate absence."""
from __future__ import annotations

import errno
import os
import stat


def touch_file(file_path: str) -> None:
    """Create the file, or update its access and modification times."""
    with open(file_path, "a"):
        os.utime(file_path, None)


def rm_file(file_to_remove: str) -> None:
    """Remove the file; one that is already gone is fine."""
    try:
        os.unlink(file_to_remove)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def rm_tree(dir_to_remove: str) -> None:
    """Remove the directory and its content; one that is already gone is fine."""
    import shutil

    try:
        shutil.rmtree(dir_to_remove)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def parse_key_val_file(file_name: str, delim: str = "=") -> dict[str, str]:
    """`key=value` lines (comments starting with # skipped), both stripped."""
    result = {}
    with open(file_name) as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            key, sep, value = line.partition(delim)
            if sep:
                result[key.strip()] = value.strip()
    return result


def is_block_device(path: str) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)
