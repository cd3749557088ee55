"""The console's token rules, apart from any server."""
from __future__ import annotations

import os
import stat

import pytest

from vmhooks.errors import UsageError
from vmhooks.web import auth
from vmhooks.web.auth import Verdict

TOKEN = auth.new_token()
PORT = 8443


def decide(path: str = "/", query: str = "", **headers: str):
    return auth.authorize(path, query, headers, TOKEN, PORT)


def test_tokens_are_long_and_fresh():
    tokens = {auth.new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(token) >= 40 for token in tokens)


def test_bearer_or_cookie_is_allowed():
    assert decide(Authorization=f"Bearer {TOKEN}").verdict is Verdict.ALLOWED
    assert decide(Authorization=f"bearer   {TOKEN} ").verdict is Verdict.ALLOWED
    assert decide(Cookie=f"a=b; {auth.cookie_name(PORT)}={TOKEN}; c=d").verdict is Verdict.ALLOWED


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}\u00e9"},
        {"Cookie": f"{auth.cookie_name(PORT + 1)}={TOKEN}"},  # another agent's console on this host
        {"Cookie": f"{auth.cookie_name(PORT)}="},
        {"Cookie": f"x{auth.cookie_name(PORT)}={TOKEN}"},
    ],
)
def test_anything_else_is_denied(headers):
    assert decide(**headers).verdict is Verdict.DENIED


def test_token_in_the_query_redirects_without_it_and_sets_the_cookie():
    decision = decide("/vms/abc", f"point=before_vm_start&token={TOKEN}&status=ok")
    assert decision.verdict is Verdict.REDIRECT
    assert decision.location == "/vms/abc?point=before_vm_start&status=ok"
    assert decision.set_cookie == f"{auth.cookie_name(PORT)}={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
    assert decide("/", f"token={TOKEN}").location == "/"


def test_a_bad_token_in_the_query_is_denied_even_with_a_good_header():
    assert decide("/", "token=nope", Authorization=f"Bearer {TOKEN}").verdict is Verdict.DENIED
    assert decide("/", f"token={TOKEN}&token={TOKEN}").verdict is Verdict.DENIED
    assert decide("/", "token=").verdict is Verdict.DENIED


@pytest.mark.parametrize("path", ["//evil.example/x", "///evil.example", "/\\evil.example", "/%2f%2fevil.example", "/%5cevil"])
def test_redirects_stay_on_this_site(path):
    location = decide(path, f"token={TOKEN}").location
    assert location.startswith("/") and not location.startswith(("//", "/\\")) and "\\" not in location


def test_published_files_are_private_and_read_back(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    auth.publish(run_dir, TOKEN, "127.0.0.1:8080")
    published = sorted([auth.TOKEN_FILE, auth.ADDRESS_FILE, auth.LAUNCHER_FILE])
    for name in published:
        assert stat.S_IMODE(os.stat(run_dir / name).st_mode) == 0o600
    assert auth.read_published(run_dir) == (TOKEN, "127.0.0.1:8080")
    assert sorted(os.listdir(run_dir)) == published  # no temporary left behind
    auth.publish(run_dir, "second", "127.0.0.1:9090")  # a restart replaces them
    assert auth.read_published(run_dir) == ("second", "127.0.0.1:9090")
    auth.withdraw(run_dir)
    assert os.listdir(run_dir) == []
    with pytest.raises(UsageError, match="--http-listen"):
        auth.read_published(run_dir)


def test_publishing_never_follows_a_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / f".{auth.TOKEN_FILE}.tmp").symlink_to(target)
    auth.publish(tmp_path, TOKEN, "127.0.0.1:1")
    assert not target.exists()
    assert (tmp_path / auth.TOKEN_FILE).read_text().strip() == TOKEN
