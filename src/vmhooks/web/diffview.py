"""A recorded unified diff (what a hook changed) as side-by-side rows: the
old text on the left, the new on the right, changed lines paired and the
changed characters inside a pair marked."""
from __future__ import annotations

import difflib
import re
from typing import NamedTuple

HUNK = re.compile(r"@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")
MAX_INLINE = 2000  # characters: longer pairs are marked whole (SequenceMatcher is quadratic)


class Segment(NamedTuple):
    text: str
    changed: bool


class Cell(NamedTuple):
    number: int
    segments: tuple[Segment, ...]


class Row(NamedTuple):
    kind: str  # "hunk", "context", "change" (a pair), "delete", "insert"
    left: Cell | None
    right: Cell | None
    header: str = ""  # the hunk's "@@ ... @@" line


def side_by_side(diff: str) -> list[Row]:
    rows: list[Row] = []
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []
    old = new = 0
    in_hunk = False

    def flush() -> None:
        for index in range(max(len(removed), len(added))):
            left = removed[index] if index < len(removed) else None
            right = added[index] if index < len(added) else None
            if left is not None and right is not None:
                left_segments, right_segments = _inline(left[1], right[1])
                rows.append(Row("change", Cell(left[0], left_segments), Cell(right[0], right_segments)))
            elif left is not None:
                rows.append(Row("delete", Cell(left[0], (Segment(left[1], True),)), None))
            elif right is not None:
                rows.append(Row("insert", None, Cell(right[0], (Segment(right[1], True),))))
        removed.clear()
        added.clear()

    for line in diff.splitlines():
        match = HUNK.match(line)
        if match:
            flush()
            old, new = int(match.group(1)), int(match.group(2))
            in_hunk = True
            rows.append(Row("hunk", None, None, line))
        elif not in_hunk or line.startswith("\\"):
            continue  # the ---/+++ file lines, "\ No newline at end of file"
        elif line.startswith("-"):
            removed.append((old, line[1:]))
            old += 1
        elif line.startswith("+"):
            added.append((new, line[1:]))
            new += 1
        else:
            flush()
            text = line[1:] if line.startswith(" ") else line
            rows.append(Row("context", Cell(old, (Segment(text, False),)), Cell(new, (Segment(text, False),))))
            old += 1
            new += 1
    flush()
    return rows


def _inline(before: str, after: str) -> tuple[tuple[Segment, ...], tuple[Segment, ...]]:
    if len(before) + len(after) > MAX_INLINE:
        return (Segment(before, True),), (Segment(after, True),)
    left: list[Segment] = []
    right: list[Segment] = []
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        changed = tag != "equal"
        if i2 > i1:
            left.append(Segment(before[i1:i2], changed))
        if j2 > j1:
            right.append(Segment(after[j1:j2], changed))
    return tuple(left), tuple(right)
