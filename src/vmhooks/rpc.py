"""JSON-RPC 2.0: parsing a request body, checking params against a method
table, calling the method, and the stable error codes.

Transport-free: the HTTP servers (`api`, `httpserver`) hand it bytes and
send back what it returns."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from vmhooks.errors import ERROR_CODES, HookError, VmhooksError

log = logging.getLogger("vmhooks.api")

MAX_BATCH = 100  # requests in one JSON-RPC batch

# Stable error codes: JSON-RPC's own here; one per kind of vmhooks error in errors.ERROR_CODES.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_BUSY = -32000  # JSON-RPC's implementation-defined range: at the connection cap


class Param(NamedTuple):
    types: tuple[type, ...]
    required: bool = False


class Method(NamedTuple):
    function: Callable[..., Any]
    params: dict[str, Param]


Response = dict[str, Any]


class Dispatcher:
    def __init__(self, methods: dict[str, Method]) -> None:
        self.methods = methods

    def handle_body(self, body: bytes) -> Response | list[Response] | None:
        """The response to one HTTP body (None: only notifications)."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(None, PARSE_ERROR, f"request is not valid JSON: {exc}")
        except RecursionError:
            return error_response(None, PARSE_ERROR, "request is nested too deeply")
        if isinstance(request, list):
            if not request:
                return error_response(None, INVALID_REQUEST, "empty batch")
            if len(request) > MAX_BATCH:
                return error_response(None, INVALID_REQUEST, f"batch of {len(request)} requests exceeds {MAX_BATCH}")
            responses = [r for r in (self.handle(item) for item in request) if r is not None]
            return responses or None
        return self.handle(request)

    def handle(self, request: object) -> Response | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            return error_response(None, INVALID_REQUEST, 'not a JSON-RPC 2.0 request (needs "jsonrpc": "2.0")')
        request_id = request.get("id")
        notification = "id" not in request
        if not isinstance(request_id, (str, int, type(None))) or isinstance(request_id, bool):
            return error_response(None, INVALID_REQUEST, "id must be a string, a number or null")
        response = self._call(request, request_id)
        return None if notification else response  # JSON-RPC: never answer a notification

    def _call(self, request: dict[str, Any], request_id: object) -> Response:
        name = request.get("method")
        if not isinstance(name, str):
            return error_response(request_id, INVALID_REQUEST, "method must be a string")
        method = self.methods.get(name)
        if method is None:
            return error_response(request_id, METHOD_NOT_FOUND, f"unknown method {ascii(name)}")
        params = request.get("params", {})
        problem = check_params(name, method, params)
        if problem:
            return error_response(request_id, INVALID_PARAMS, problem)
        try:
            result = method.function(**params)
        except VmhooksError as exc:
            data: dict[str, Any] = {"kind": exc.kind}
            if isinstance(exc, HookError) and exc.result is not None:
                data["scripts"] = _failed_scripts(exc.result)
            return error_response(request_id, ERROR_CODES.get(exc.kind, ERROR_CODES["error"]), str(exc), data)
        except Exception as exc:  # a bug: say so, keep serving
            log.exception("%s failed", name)
            return error_response(request_id, INTERNAL_ERROR, f"internal error in {name}: {exc}")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}


def check_params(name: str, method: Method, params: object) -> str:
    """'' when `params` fit the method (absent optional ones are dropped), else why not."""
    if not isinstance(params, dict):
        return f"{name}: params must be an object"
    unknown = sorted(set(params) - set(method.params))
    if unknown:
        return f"{name}: unknown param(s) {', '.join(ascii(key) if not key.isprintable() else key for key in unknown)}"
    for key, spec in method.params.items():
        if key not in params or params[key] is None:
            if spec.required:
                return f"{name}: missing param {key}"
            params.pop(key, None)
            continue
        value = params[key]
        if not isinstance(value, spec.types) or (bool not in spec.types and isinstance(value, bool)):
            kinds = "/".join(t.__name__ for t in spec.types)
            return f"{name}: param {key} must be {kinds}, not {type(value).__name__}"
        problem = unencodable_text(key, value)
        if problem:
            return f"{name}: {problem}"
    return ""


def unencodable_text(path: str, value: object) -> str:
    """'' when every string in `value` (keys too, at any depth) is valid
    Unicode, else which one is not.

    JSON may carry lone surrogates ("\\ud800"); they cannot be encoded as
    UTF-8, so they would fail deep inside XML parsing, SQLite or a hook's
    environment. Walked with a stack, not recursion: depth is the client's."""
    stack: list[tuple[str, object]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            bad = _surrogate_at(item)
            if bad >= 0:
                return f"param {where} is not valid Unicode text (a lone surrogate at character {bad})"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _surrogate_at(key) >= 0:
                    return f"param {where} has a key that is not valid Unicode text: {ascii(key)}"
                stack.append((f"{where}[{json.dumps(key)}]", child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
    return ""


def _surrogate_at(text: str) -> int:
    """Where `text` stops being encodable as UTF-8, or -1."""
    if text.isascii():  # the common case, and the cheap one
        return -1
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return -1


def _failed_scripts(result: Any) -> list[dict[str, Any]]:
    return [
        {"name": run.name, "status": str(run.status), "rc": run.rc, "stderr": run.stderr, "note": run.note}
        for run in result.scripts
        if run.failed
    ]


def error_response(request_id: object, code: int, message: str, data: object = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}
