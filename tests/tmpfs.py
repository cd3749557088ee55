"""A small real tmpfs that a test can fill to the last byte and free again
(tests run as root; elsewhere the tests that need one skip, saying why)."""
from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class Tmpfs:
    def __init__(self, path: Path, size_kib: int) -> None:
        self.path = path
        self.size_kib = size_kib
        self.fillers: list[Path] = []

    def fill(self) -> None:
        """Take every free byte: one big file, then one-page files until not
        even one more page fits."""
        chunk = b"\0" * (1 << 20)
        while True:
            path = self.path / f".filler-{len(self.fillers)}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self.fillers.append(path)
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)
            if path.stat().st_size == 0:
                return
            chunk = b"\0" * 4096

    def free(self) -> None:
        for path in self.fillers:
            path.unlink(missing_ok=True)
        self.fillers.clear()

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 16 MiB tmpfs, mode 0700, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "tmpfs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield Tmpfs(path, 16 << 10)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
