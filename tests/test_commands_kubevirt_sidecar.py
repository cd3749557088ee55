"""`vmhooks kubevirt-sidecar` arguments: each mistake is one line, and
nothing is left behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vmhooks
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
    assert main(["kubevirt-sidecar", "--socket-mode", "rw-------"]) == 2
    err = capsys.readouterr().err  # one line, as every command-line mistake
    assert "'rw-------' is not an octal mode" in err and err.count("\n") == 1


def test_bad_property_rules_fail_before_listening(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sockets = tmp_path / "s"
    code = main(["kubevirt-sidecar", "--hooks-dir", str(tmp_path), "--socket-dir", str(sockets), "--properties", "a=("])
    err = capsys.readouterr().err
    assert code == 2 and "property 'a': invalid regex '('" in err and len(err.strip().splitlines()) == 1
    assert not sockets.exists()


def test_missing_hooks_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A hooks volume that did not mount would otherwise pass every VM through untouched.
    code = main(["kubevirt-sidecar", "--hooks-dir", str(tmp_path / "none"), "--socket-dir", str(tmp_path / "s")])
    assert code == 2 and f"hooks directory {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def test_unusable_state_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["--hooks-dir", str(tmp_path), "--socket-dir", str(tmp_path / "s"), "--state-dir", str(blocker / "state")]
    code = main(["kubevirt-sidecar", *args])
    err = capsys.readouterr().err
    assert code == 1 and f"cannot keep the hook history in {blocker / 'state'}" in err
    assert len(err.strip().splitlines()) == 1


def test_nothing_below_imports_the_kubevirt_package() -> None:
    package = Path(vmhooks.__file__).parent
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "vmhooks.kubevirt" in path.read_text() and "kubevirt" not in path.relative_to(package).parts[0]
    )
    assert importers == ["commands/kubevirt_sidecar.py"]


def test_missing_grpc_is_one_clear_line(tmp_path: Path) -> None:
    code = "import sys; sys.modules['grpc'] = None; from vmhooks.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "kubevirt-sidecar", "--hooks-dir", str(tmp_path), "--socket-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("vmhooks: kubevirt-sidecar needs the kubevirt extra (pip install 'vmhooks[kubevirt]')")
    assert len(result.stderr.strip().splitlines()) == 1
