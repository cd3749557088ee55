"""Custom property values against declared regexes (oVirt's
UserDefinedVMProperties `name=regex;name=regex`)."""
from __future__ import annotations

import pytest

from vmhooks.errors import InvalidEnvironmentError
from vmhooks.properties import check, compile_rule, parse_user_defined


def test_parse_two_rules() -> None:
    rules = parse_user_defined("pincpu=^[0-9,^-]+$;cantmigrate=^.*$")
    assert set(rules) == {"pincpu", "cantmigrate"}
    assert rules["pincpu"].pattern == "^[0-9,^-]+$"
    assert rules["cantmigrate"].pattern == "^.*$"


def test_regex_may_contain_semicolons() -> None:
    rules = parse_user_defined("a=^x;y$;b=^(1|2)$")
    assert rules["a"].pattern == "^x;y$"
    assert rules["b"].pattern == "^(1|2)$"


def test_regex_may_contain_equals() -> None:
    assert parse_user_defined("opts=^k=v$")["opts"].pattern == "^k=v$"


def test_whitespace_and_trailing_separator() -> None:
    rules = parse_user_defined("  a=^1$; b=^2$ ;")
    assert set(rules) == {"a", "b"}
    assert rules["b"].fullmatch("2")


@pytest.mark.parametrize("spec", ["", "  ", ";"])
def test_empty_spec(spec: str) -> None:
    assert parse_user_defined(spec) == {}


@pytest.mark.parametrize("spec", ["noequals", "1abc=x", "a-b=x", "=x"])
def test_malformed_definition(spec: str) -> None:
    with pytest.raises(InvalidEnvironmentError, match="not of the form name=regex"):
        parse_user_defined(spec)


def test_invalid_regex() -> None:
    with pytest.raises(InvalidEnvironmentError, match="invalid regex"):
        parse_user_defined("a=([")
    with pytest.raises(InvalidEnvironmentError, match="'b'"):
        compile_rule("b", "*")


def test_check_accepts_matching_values() -> None:
    rules = parse_user_defined("pincpu=^[0-9,^-]+$")
    assert check({"pincpu": "0-3,^2"}, rules, "custom property") == ()


def test_check_refuses_a_mismatch_naming_it() -> None:
    rules = parse_user_defined("pincpu=^[0-9,^-]+$")
    with pytest.raises(InvalidEnvironmentError) as info:
        check({"pincpu": "all"}, rules, "custom property")
    assert "pincpu='all'" in str(info.value)
    assert "^[0-9,^-]+$" in str(info.value)


def test_check_is_a_full_match() -> None:
    rules = parse_user_defined("n=[0-9]+")  # no anchors: still the whole value
    assert check({"n": "12"}, rules, "p") == ()
    with pytest.raises(InvalidEnvironmentError):
        check({"n": "12a"}, rules, "p")


def test_check_warns_about_undeclared_names() -> None:
    rules = parse_user_defined("a=.*")
    warnings = check({"a": "x", "other": "y", "third": "z"}, rules, "custom property")
    assert len(warnings) == 2
    assert "'other'" in warnings[0] and "'third'" in warnings[1]


def test_check_values_of_other_types() -> None:
    rules = parse_user_defined("flag=^(True|False)$;empty=^$")
    assert check({"flag": True, "empty": None}, rules, "p") == ()


def test_check_nothing() -> None:
    assert check(None, parse_user_defined("a=.*"), "p") == ()
