"""Output guardrails: what a chain whose output is used may hand back."""
from __future__ import annotations

import difflib
import json
import xml.etree.ElementTree as ET

from vmhooks.points import HookPoint, Payload

# The stdlib parser resolves no external entities, and the expat it is built
# on (>= 2.4.1) refuses entity-expansion bombs, so hostile XML costs nothing.


def output_problem(point: HookPoint, before: bytes, after: bytes) -> str:
    """Why `after` may not replace `before` at `point` ('' when it may).

    The phrase reads after the script's name: "50_x wrote ..."."""
    try:
        text = after.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"wrote a payload that is not UTF-8 (byte {exc.start})"
    if point.payload is Payload.JSON:
        try:
            json.loads(text)
        except ValueError as exc:
            return f"wrote invalid JSON ({exc})"
        return ""
    try:
        new = ET.fromstring(text)
    except ET.ParseError as exc:
        return f"wrote malformed XML ({exc})"
    try:
        old = ET.fromstring(before.decode("utf-8"))
    except (ET.ParseError, UnicodeDecodeError):
        return ""  # the input was no XML either: nothing to compare with
    if new.tag != old.tag:
        return f"changed the root element from <{old.tag}> to <{new.tag}>"
    if point.payload is Payload.DOMAIN:
        for field in ("uuid", "name"):
            was, now = _child_text(old, field), _child_text(new, field)
            if was != now:
                return f"changed the domain <{field}> from {was!r} to {now!r}"
    return ""


def _child_text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None else (child.text or "").strip()


def same_xml(a: str, b: str) -> bool:
    """Whether two documents are the same tree (names, attributes, text),
    as the C parser reads them: a hook that only re-serialised the document
    changed nothing. Far cheaper than two C14N passes, which then run only
    for a real change. False when either is not XML."""
    try:
        pending = [(ET.fromstring(a), ET.fromstring(b))]
    except (ET.ParseError, ValueError):
        return False
    while pending:  # a loop, not recursion: a hook's output may nest deeply
        x, y = pending.pop()
        if x.tag != y.tag or x.attrib != y.attrib or x.text != y.text or x.tail != y.tail or len(x) != len(y):
            return False
        pending.extend(zip(x, y))
    return True


def canonical_xml(text: str) -> str:
    """C14N 2.0 form of `text` (quotes, attribute order and the XML
    declaration normalised); `text` itself when it is not XML."""
    try:
        return ET.canonicalize(text)
    except ET.ParseError:
        return text


def canonical_json(text: str) -> str:
    """`text` re-dumped one key a line with sorted keys; itself when not JSON."""
    try:
        return json.dumps(json.loads(text), indent=1, sort_keys=True) + "\n"
    except ValueError:
        return text


def payload_diff(point: HookPoint, before: bytes, after: bytes, script: str) -> str:
    """What `script` changed, as a unified diff; '' when nothing that matters.

    XML and JSON are compared in canonical form (JSON one key a line), so a
    hook that rewrites the document shows only its real edits."""
    old, new = before.decode("utf-8", "replace"), after.decode("utf-8", "replace")
    if point.payload.is_xml:
        if same_xml(old, new):
            return ""
        old, new = canonical_xml(old), canonical_xml(new)
    else:
        old, new = canonical_json(old), canonical_json(new)
    if old == new:
        return ""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile="before",
        tofile=f"after {script}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
