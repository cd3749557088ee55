"""`vmhooks kubevirt-sidecar` arguments: each mistake is one line, and
nothing is left behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmhooks.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "../x"], "--name '../x': letters, digits"),
        (["--name=-x"], "--name '-x'"),
        (["--hook-timeout", "0"], "--hook-timeout must be a positive number"),
        (["--name", "n" * 60, "--socket-dir", "/" + "d" * 60], "longer than a Unix socket allows"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code = main(["kubevirt-sidecar", "--hooks-dir", str(tmp_path), "--socket-dir", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_bad_socket_mode_is_an_argparse_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["kubevirt-sidecar", "--socket-mode", "rw-------"])
    assert caught.value.code == 2
    assert "'rw-------' is not an octal mode" in capsys.readouterr().err


def test_bad_property_rules_fail_before_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sockets = tmp_path / "s"
    code = main(["kubevirt-sidecar", "--hooks-dir", str(tmp_path), "--socket-dir", str(sockets), "--properties", "a=("])
    err = capsys.readouterr().err
    assert code == 2 and "property 'a': invalid regex '('" in err and len(err.strip().splitlines()) == 1
    assert not sockets.exists()
