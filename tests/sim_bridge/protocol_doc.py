"""Reading docs/protocol.md's sections and tables, for the tests that check it against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_section(heading: str) -> str:
    """The text under the markdown heading ``heading`` up to the next heading of its level."""
    text = doc_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\b.*$", text, re.MULTILINE)
    assert match, f"docs/protocol.md has no heading {heading!r}"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, re.MULTILINE)
    return rest[: end.start() if end else len(rest)]


def doc_table(section: str, first_column: str) -> dict[str, list[str]]:
    """Rows of the table whose header starts with ``first_column``: backticked name -> cells."""
    rows: dict[str, list[str]] = {}
    lines = iter(section.splitlines())
    for line in lines:
        if re.match(rf"\|\s*{re.escape(first_column)}\s*\|", line):
            next(lines)  # the |---| separator
            for row in lines:
                if not row.startswith("|"):
                    return rows
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
                rows[cells[0].strip("`")] = cells[1:]
    return rows


def kind_text(kind: Any) -> str:
    """How the document writes a field kind."""
    if isinstance(kind, tuple):
        return "`" + " \\| ".join(f'"{k}"' for k in kind) + "`"
    return f"`{kind}`"
