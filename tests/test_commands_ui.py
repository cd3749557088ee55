"""`vmhooks ui`: the console's URL with its token."""
from __future__ import annotations

import stat
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
    assert no_browser_allowed == [(tmp_path / auth.LAUNCHER_FILE).as_uri()]  # never the token: ps shows it


def test_the_browser_gets_the_token_from_a_private_page(tmp_path):
    auth.publish(tmp_path, "s3cr3t", "[::1]:9000")
    launcher = tmp_path / auth.LAUNCHER_FILE
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o600
    page = launcher.read_text()
    assert 'content="0; url=http://[::1]:9000/?token=s3cr3t"' in page and 'content="no-referrer"' in page
    auth.withdraw(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_launcher_page_cannot_be_broken_out_of():
    page = auth.launcher_page(auth.console_url('x"><script>', "127.0.0.1:1"))
    assert "<script>" not in page and "&quot;&gt;&lt;script&gt;" in page


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
