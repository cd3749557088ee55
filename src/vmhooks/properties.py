"""Checking custom property values against declared regexes, as oVirt
Engine's `UserDefinedVMProperties` does (`name=regex;name=regex`)."""
from __future__ import annotations

import re
from collections.abc import Mapping

from vmhooks.errors import InvalidEnvironmentError

PropertyRules = Mapping[str, "re.Pattern[str]"]

# A ';' ends a definition only where the next one (`name=`) starts, so a
# regex may itself contain ';'.
_DEFINITION_SEPARATOR = re.compile(r";(?=\s*[A-Za-z_][A-Za-z0-9_]*=)")


def parse_user_defined(spec: str | None) -> dict[str, re.Pattern[str]]:
    """`pincpu=^[0-9,^-]+$;cantmigrate=^.*$` -> {name: compiled regex}."""
    rules: dict[str, re.Pattern[str]] = {}
    for definition in _DEFINITION_SEPARATOR.split((spec or "").strip().rstrip(";")):
        if not definition.strip():
            continue
        name, sep, regex = definition.strip().partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise InvalidEnvironmentError(
                f"property definition {definition.strip()!r} is not of the form name=regex"
            )
        rules[name] = compile_rule(name, regex)
    return rules


def compile_rule(name: str, regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as exc:
        raise InvalidEnvironmentError(f"property {name!r}: invalid regex {regex!r} ({exc})") from None


def check(values: Mapping[str, object] | None, rules: PropertyRules, origin: str) -> tuple[str, ...]:
    """Raise on a value its rule refuses; return a warning per undeclared name."""
    warnings = []
    for name, value in (values or {}).items():
        rule = rules.get(name)
        if rule is None:
            warnings.append(f"{origin} {name!r} is declared by no installed hook or admin rule")
        elif not rule.fullmatch("" if value is None else str(value)):
            raise InvalidEnvironmentError(
                f"{origin} {name}={value!r} does not match its declared regex {rule.pattern!r}"
            )
    return tuple(warnings)


def combine(*sources: Mapping[str, re.Pattern[str]]) -> dict[str, re.Pattern[str]] | None:
    """The rules to check custom properties with, later sources winning for
    a name several declare: callers pass the installed catalogue hooks'
    rules, then the admin's own (`parse_user_defined`).

    None when nothing is declared at all: values go unchecked and no
    "undeclared property" warnings are made on hosts that use no rules."""
    rules: dict[str, re.Pattern[str]] = {}
    for source in sources:
        rules.update(source)
    return rules or None
