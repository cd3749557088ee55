"""A recorded unified diff as side-by-side rows."""
from __future__ import annotations

import difflib

from vmhooks.web.diffview import MAX_INLINE, Cell, Row, Segment, side_by_side


def unified(before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), "before", "after"))


def texts(cell: Cell | None) -> str | None:
    return None if cell is None else "".join(segment.text for segment in cell.segments)


def test_changed_lines_are_paired_with_their_line_numbers_and_the_change_marked():
    before = "a\nb\n<vcpu placement='static'>1</vcpu>\nd\n"
    after = "a\nb\n<vcpu cpuset='1-4' placement='static'>1</vcpu>\nd\n"
    rows = side_by_side(unified(before, after))
    assert [row.kind for row in rows] == ["hunk", "context", "context", "change", "context"]
    change = rows[3]
    assert change.left.number == 3 and change.right.number == 3
    assert texts(change.left) == "<vcpu placement='static'>1</vcpu>"
    assert [s for s in change.right.segments if s.changed] == [Segment(" cpuset='1-4'", True)]
    assert not any(s.changed for s in change.left.segments)  # nothing was taken out of the old line


def test_unpaired_lines_stand_alone_and_numbers_follow_each_side():
    before = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n"
    after = "1\nnew\n2\n3\n4\n5\n6\n7\n9\n10\n"
    rows = side_by_side(unified(before, after))
    inserts = [row for row in rows if row.kind == "insert"]
    deletes = [row for row in rows if row.kind == "delete"]
    assert [(row.left, row.right.number, texts(row.right)) for row in inserts] == [(None, 2, "new")]
    assert [(row.left.number, texts(row.left), row.right) for row in deletes] == [(8, "8", None)]
    context = [row for row in rows if row.kind == "context"]
    assert all(texts(row.left) == texts(row.right) for row in context)
    assert [(row.left.number, row.right.number) for row in context if texts(row.left) == "9"] == [(9, 9)]


def test_more_removed_than_added_pairs_what_it_can():
    rows = side_by_side(unified("x\na\nb\nc\ny\n", "x\nA\ny\n"))
    kinds = [row.kind for row in rows if row.kind not in ("hunk", "context")]
    assert kinds == ["change", "delete", "delete"]


def test_file_headers_and_no_newline_markers_are_not_rows():
    diff = "--- before\n+++ after\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n"
    assert side_by_side(diff) == [
        Row("hunk", None, None, "@@ -1 +1 @@"),
        Row("change", Cell(1, (Segment("a", True),)), Cell(1, (Segment("b", True),))),
    ]


def test_long_lines_are_marked_whole_not_compared_character_by_character():
    before, after = "a" * MAX_INLINE, "b" * MAX_INLINE
    change = side_by_side(unified(before + "\n", after + "\n"))[1]
    assert change.left.segments == (Segment(before, True),)
    assert change.right.segments == (Segment(after, True),)


def test_empty_diff_has_no_rows():
    assert side_by_side("") == []
