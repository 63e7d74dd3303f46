"""The README and the docs name only files that exist, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# A path in backquotes under one of the project's folders, e.g. `atomic_cache/keys.py`.
_PATH = re.compile(r"`((?:atomic_cache|lua|tests|examples|docs)/[\w/.\-]*[\w/])`")


def test_every_file_the_pages_name_exists() -> None:
    missing = [
        f"{page.relative_to(ROOT)}: {match[1]}"
        for page in PAGES
        for match in _PATH.finditer(page.read_text())
        if not (ROOT / match[1]).exists()
    ]
    assert missing == []


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
