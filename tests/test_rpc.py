"""JSON-RPC dispatch: params that cannot reach a hook are refused as invalid
params naming the field, never an internal error. The method table here is
the test's own; the agent's is exercised through a real process below."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProcess, domain_xml

from vmhooks.client import RpcError
from vmhooks.rpc import INVALID_PARAMS, Dispatcher, Method, Param

calls: list[dict[str, Any]] = []


def record(**params: Any) -> str:
    calls.append(params)
    return "ok"


DISPATCHER = Dispatcher(
    {"T.do": Method(record, {"xml": Param((str,), True), "custom": Param((dict,)), "items": Param((list,))})}
)


def call(params: dict[str, Any]) -> dict[str, Any]:
    """Through the wire format: lone surrogates travel as JSON escapes."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "T.do", "params": params}).encode()
    response = DISPATCHER.handle_body(body)
    assert isinstance(response, dict)
    return response


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"xml": "<domain>\ud800</domain>"}, "param xml "),
        ({"xml": "", "custom": {"pincpu": "1\udfff"}}, 'param custom["pincpu"] '),
        ({"xml": "", "custom": {"dev": {"mac": {"extnet": "\ud83d"}}}}, 'param custom["dev"]["mac"]["extnet"] '),
        ({"xml": "", "custom": {"\ud800name": "x"}}, "param custom has a key"),
        ({"xml": "", "custom": {"ok": {"\udc00": "x"}}}, 'param custom["ok"] has a key'),
        ({"xml": "", "items": ["fine", {"deep": ["\ud800"]}]}, 'param items[1]["deep"][0] '),
    ],
)
def test_unencodable_strings_at_any_depth_are_invalid_params_naming_the_field(params, field):
    calls.clear()
    error = call(params)["error"]
    assert error["code"] == INVALID_PARAMS
    assert field in error["message"] and "not valid Unicode" in error["message"]
    assert calls == []  # refused before the method ran


def test_valid_unicode_passes_untouched():
    calls.clear()
    params = {"xml": "<domain>é 😀 中</domain>", "custom": {"ключ": {"x": ["ü"]}}}
    assert call(params)["result"] == "ok"
    assert calls == [params]


def test_deep_nesting_is_walked_without_recursion():
    calls.clear()
    deep: Any = "\ud800"
    for _ in range(5000):
        deep = [deep]
    response = DISPATCHER.handle({"jsonrpc": "2.0", "id": 1, "method": "T.do", "params": {"xml": "", "items": deep}})
    assert response is not None and response["error"]["code"] == INVALID_PARAMS


def test_the_agent_refuses_lone_surrogates_as_invalid_params(tmp_path: Path, hooks_dir: Path, make_hook):
    make_hook("before_vm_start", "50_ok", "exit 0")
    agent = AgentProcess(tmp_path / "agent", hooks_dir).start()
    try:
        vm_id = str(uuid.uuid4())
        good = domain_xml("s", vm_id)
        cases = [
            ("VM.create", {"xml": good.replace("<name>s", "<name>s\ud800")}, "param xml "),
            ("VM.create", {"xml": good, "custom": {"pincpu": "\ud800"}}, 'param custom["pincpu"]'),
            ("VM.create", {"xml": good, "deviceCustom": {"52:54:00:12:34:56": {"extnet": "a\udfff"}}},
             'param deviceCustom["52:54:00:12:34:56"]["extnet"]'),
            ("VM.setTicket", {"vmId": vm_id, "password": "x", "params": {"k": "\ud800"}}, 'param params["k"]'),
            ("VM.pause", {"vmId": "\ud800"}, "param vmId "),
        ]  # fmt: skip
        for method, params, field in cases:
            with pytest.raises(RpcError) as error:
                agent.call(method, **params)
            assert error.value.code == INVALID_PARAMS and field in str(error.value), (method, str(error.value))
        assert agent.call("VM.list") == []
        assert "Traceback" not in agent.log() and "internal error" not in agent.log()
    finally:
        assert agent.stop() == 0
