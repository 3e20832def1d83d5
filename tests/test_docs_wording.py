"""The documentation speaks of the project, not of how it was commissioned."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_OF_THE_PROJECT = re.compile(r"\b(?:the|product) brief\b|\bissue #?\d+\b|\bthe lead\b",
                                re.IGNORECASE)


def test_docs_do_not_speak_of_briefs_or_issues() -> None:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if NOT_OF_THE_PROJECT.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
