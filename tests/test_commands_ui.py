"""`vmhooks ui`: the console's URL with its token."""
from __future__ import annotations

import webbrowser

import pytest

from vmhooks.cli import main
from vmhooks.web import auth


@pytest.fixture
def no_browser_allowed(monkeypatch):
    opened: list[str] = []

    class Recorder:
        def open(self, url: str) -> bool:
            opened.append(url)
            return True

    monkeypatch.setattr(webbrowser, "get", lambda *args: Recorder())
    return opened


def test_prints_the_url_with_the_token(tmp_path, capsys, monkeypatch, no_browser_allowed):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    auth.publish(tmp_path, "secret-token", "127.0.0.1:8123")
    assert main(["ui", "--run-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:8123/?token=secret-token\n"
    assert no_browser_allowed == []  # no display: no browser started in this terminal


def test_opens_a_browser_only_where_there_is_a_display(tmp_path, capsys, monkeypatch, no_browser_allowed):
    auth.publish(tmp_path, "t", "[::1]:9000")
    monkeypatch.setenv("DISPLAY", ":0")
    assert main(["ui", "--run-dir", str(tmp_path), "--no-browser"]) == 0
    assert no_browser_allowed == []
    assert main(["ui", "--run-dir", str(tmp_path)]) == 0
    assert no_browser_allowed == ["http://[::1]:9000/?token=t"]


def test_run_dir_from_the_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    auth.publish(run_dir, "from-config", "127.0.0.1:1")
    config = tmp_path / "vmhooks.toml"
    config.write_text(f'[agent]\nrun_dir = "{run_dir}"\n')
    assert main(["ui", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "http://127.0.0.1:1/?token=from-config"


def test_without_a_console_it_says_why_in_one_line(tmp_path, capsys):
    assert main(["ui", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no web console token" in err and "--http-listen" in err
