"""The repository's own docs stay true: no reader is sent outside the clone, and the equation index matches the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def test_readme_and_docs_never_send_a_reader_outside_the_clone() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text, f"{path.name} points outside the repository"


def test_readme_links_the_architecture() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_indexed_equation_is_numbered_in_its_module() -> None:
    rows = re.findall(r"^\| \((\d+)\) \| .+? \| `([\w/]+\.py)` \|$", ARCHITECTURE.read_text(encoding="utf-8"), re.M)
    numbers = [int(n) for n, _ in rows]
    assert numbers == sorted(set(numbers)), "the index repeats an equation number or is out of order"
    for number, module in rows:
        source = (ROOT / module).read_text(encoding="utf-8")
        assert f"({number})" in source, f"eq. ({number}) is indexed in {module} but not numbered there"


def test_no_equation_in_positioning_is_missing_from_the_index() -> None:
    indexed = {int(n) for n in re.findall(r"^\| \((\d+)\) \|", ARCHITECTURE.read_text(encoding="utf-8"), re.M)}
    for path in sorted((ROOT / "positioning").glob("*.py")):
        # An equation is numbered where it is written out: a formula line ending in "(N)".
        for number in re.findall(r"^ {4}\S.*\s\((\d+)\)\s*$", path.read_text(encoding="utf-8"), re.M):
            assert int(number) in indexed, f"eq. ({number}) of {path.name} is not in docs/architecture.md"
