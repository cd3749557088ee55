"""The console's token: made at start, written to `<run-dir>/http-token`
(0600), and required on every request, as `Authorization: Bearer TOKEN`,
as the cookie it sets, or once as `?token=TOKEN`, which sets the cookie
(HttpOnly, SameSite=Strict) and redirects to the same URL without it, so
the token does not stay in the address bar, the history or a Referer."""
from __future__ import annotations

import enum
import hmac
import html
import os
import secrets
from pathlib import Path
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode

from vmhooks.errors import UsageError

TOKEN_FILE = "http-token"
ADDRESS_FILE = "http-address"  # where the console listens: for `vmhooks ui`
# A page that sends the browser on to the console with the token: `vmhooks ui`
# opens this file, so the token never shows on a browser's command line (ps).
LAUNCHER_FILE = "http-console.html"


class Headers(Protocol):
    """A request's headers, looked up case-insensitively (http.server's Message)."""

    def get(self, name: str, failobj: None = None) -> Any: ...


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    REDIRECT = "redirect"  # a good ?token=: set the cookie, drop the token from the URL
    DENIED = "denied"


class Decision(NamedTuple):
    verdict: Verdict
    location: str = ""  # REDIRECT: where to
    set_cookie: str = ""  # REDIRECT: the Set-Cookie value


def new_token() -> str:
    return secrets.token_urlsafe(32)


def cookie_name(port: int) -> str:
    """Cookies ignore ports: two agents on one host must not overwrite each other's."""
    return f"vmhooks_console_{port}"


def authorize(path: str, query: str, headers: Headers, token: str, port: int) -> Decision:
    """What to do with a request for `path?query`, given its headers."""
    pairs = parse_qsl(query, keep_blank_values=True)
    offered = [value for key, value in pairs if key == "token"]
    if offered:
        if len(offered) != 1 or not _same(offered[0], token):
            return Decision(Verdict.DENIED)
        rest = urlencode([(key, value) for key, value in pairs if key != "token"])
        location = same_site_path(path) + (f"?{rest}" if rest else "")
        cookie = f"{cookie_name(port)}={token}; Path=/; HttpOnly; SameSite=Strict"
        return Decision(Verdict.REDIRECT, location, cookie)
    scheme, _, credentials = (headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and _same(credentials.strip(), token):
        return Decision(Verdict.ALLOWED)
    if _same(_cookie(headers.get("Cookie") or "", cookie_name(port)), token):
        return Decision(Verdict.ALLOWED)
    return Decision(Verdict.DENIED)


def same_site_path(path: str) -> str:
    """`path` re-quoted as one absolute path on this site: never `//host`
    or `/\\host`, which a browser would take for another site."""
    return "/" + quote(unquote(path).lstrip("/\\"), safe="/:@!$&'()*+,;=-._~")


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return ""


def _same(offered: str, token: str) -> bool:
    """Constant-time comparison (any text is accepted as input, none crashes it)."""
    return bool(offered) and hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), token.encode())


# -- the files `vmhooks ui` reads ------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as a 0600 file, atomically (never readable by others, even briefly)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def console_url(token: str, address: str) -> str:
    return f"http://{address}/?token={token}"


def launcher_page(url: str) -> str:
    link = html.escape(url, quote=True)
    return (
        '<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
        f'<meta http-equiv="refresh" content="0; url={link}"><title>vmhooks console</title>'
        f'<a href="{link}">Open the vmhooks console</a>'
    )


def publish(run_dir: Path, token: str, address: str) -> None:
    write_private(run_dir / TOKEN_FILE, token)
    write_private(run_dir / ADDRESS_FILE, address)
    write_private(run_dir / LAUNCHER_FILE, launcher_page(console_url(token, address)))


def withdraw(run_dir: Path) -> None:
    for name in (TOKEN_FILE, ADDRESS_FILE, LAUNCHER_FILE):
        (run_dir / name).unlink(missing_ok=True)


def read_published(run_dir: Path) -> tuple[str, str]:
    """(token, HOST:PORT) of the console of the agent using `run_dir`."""
    try:
        token = (run_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()
        address = (run_dir / ADDRESS_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise UsageError(
            f"no web console token in {run_dir}: is the agent running with --http-listen (or http_listen)?"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read the web console token in {run_dir}: {exc.strerror}") from None
    if not token or not address:
        raise UsageError(f"the web console files in {run_dir} are empty")
    return token, address
