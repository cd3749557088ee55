from __future__ import annotations

from pathlib import Path

import pytest

from vmhooks.commands.serve import settings_from
from vmhooks.cli import build_parser
from vmhooks.config import AgentSettings, load_settings_file
from vmhooks.errors import UsageError


def test_toml_settings_and_flags_override_them(tmp_path: Path):
    config = tmp_path / "vmhooks.toml"
    config.write_text(
        '[agent]\nlibvirt_uri = "qemu:///system"\nhook_timeout = 5\nstate_dir = "/srv/state"\n'
        '[agent.hook_timeouts]\nbefore_vm_start = 30\n"before_vm_start/50_slow" = 120\n'
    )
    args = build_parser().parse_args(["serve", "--config", str(config), "--hook-timeout", "7"])
    settings = settings_from(args)
    assert settings.libvirt_uri == "qemu:///system"
    assert settings.hook_timeout == 7
    assert settings.state_dir == Path("/srv/state")
    assert settings.hook_timeouts == {"before_vm_start": 30, "before_vm_start/50_slow": 120}
    assert settings.socket_path == AgentSettings().run_dir / "vmhooks.sock"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[agent]\nnope = 1\n", "unknown setting 'nope'"),
        ("[agent]\nhook_timeout = 'x'\n", "hook_timeout has the wrong type"),
        ("[agent]\nallow_unsafe_hooks = 1\n", "allow_unsafe_hooks has the wrong type"),
        ("[agent\n", "not valid TOML"),
        ("[other]\n", "only an [agent] table"),
        ("[agent.hook_timeouts]\nbefore_vm_start = 0\n", "must be > 0"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        load_settings_file(config)


def test_example_config_in_contrib_is_valid():
    example = Path(__file__).resolve().parent.parent / "contrib" / "vmhooks.toml"
    values = load_settings_file(example)
    AgentSettings(**values)


def test_hooks_pythonpath_in_the_config_file(tmp_path: Path) -> None:
    from vmhooks.config import load_settings_file

    site = tmp_path / "site"
    site.mkdir(mode=0o755)
    config = tmp_path / "vmhooks.toml"
    config.write_text(f'[agent]\nhooks_pythonpath = ["{site}"]\n')
    assert load_settings_file(config)["hooks_pythonpath"] == (site,)
    config.write_text(f'[agent]\nhooks_pythonpath = "{site}:{tmp_path / "absent"}"\n')
    with pytest.raises(UsageError, match="hooks_pythonpath: .*absent' is not a directory"):
        load_settings_file(config)


def test_fast_path_settings_from_the_file_and_the_flag(tmp_path: Path):
    config = tmp_path / "vmhooks.toml"
    config.write_text(
        '[agent]\nfast_path = true\nfast_path_exclude = ["before_vm_start/50_*"]\n'
        'fast_path_interpreters = ["/usr/bin/python3"]\n'
    )
    settings = settings_from(build_parser().parse_args(["serve", "--config", str(config)]))
    assert (settings.fast_path, settings.fast_path_exclude, settings.fast_path_interpreters) == (
        True, ("before_vm_start/50_*",), ("/usr/bin/python3",))  # fmt: skip
    assert not settings_from(build_parser().parse_args(["serve", "--config", str(config), "--no-fast-path"])).fast_path
    assert AgentSettings().fast_path


@pytest.mark.parametrize("text", ["[agent]\nfast_path_exclude = [1]\n", "[agent]\nfast_path_interpreters = [\"\"]\n"])
def test_fast_path_lists_hold_strings(tmp_path: Path, text: str):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match="must be a list of strings"):
        load_settings_file(config)


def test_connection_settings_from_toml_and_flags(tmp_path: Path):
    config = tmp_path / "vmhooks.toml"
    config.write_text("[agent]\nmax_connections = 16\nrequest_timeout = 5\nshutdown_grace = 2.5\n")
    args = build_parser().parse_args(["serve", "--config", str(config), "--shutdown-grace", "0"])
    settings = settings_from(args)
    assert (settings.max_connections, settings.request_timeout, settings.shutdown_grace) == (16, 5, 0)
    defaults = AgentSettings()
    assert (defaults.max_connections, defaults.request_timeout, defaults.shutdown_grace) == (128, 30.0, 10.0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-connections", "0"], "max connections must be at least 1"),
        (["--request-timeout", "0"], "request timeout must be a positive"),
        (["--shutdown-grace", "-1"], "shutdown grace must be 0 or more"),
        (["--request-timeout", "nan"], "request timeout must be a positive"),
        (["--shutdown-grace", "inf"], "shutdown grace must be 0 or more"),
    ],
)
def test_bad_connection_settings_are_refused(flags: list[str], message: str):
    args = build_parser().parse_args(["serve", "--config", "/dev/null", *flags])
    with pytest.raises(UsageError, match=message):
        settings_from(args)
