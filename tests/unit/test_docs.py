"""The docs hold together: every relative link and anchor resolves, the README stays a front page,
each reference page exists, and no paragraph is written in two places.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
REFERENCE = ("deploy", "api", "bulk", "operations", "security", "development", "graph")
README_MAX_LINES = 250
# Shorter items (a command, a one-line table row) may rightly repeat; prose of this length may not.
REPEAT_MIN_CHARS = 100

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
_ITEM_START = re.compile(r"^\s*(?:[-*+]|\d+\.)\s|^\s*\|")


def doc_files() -> list[Path]:
    """Every Markdown file the repository presents as documentation."""
    return [README, REPO / "infra" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines outside fenced code blocks, where Markdown is rendered."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped, spaces as hyphens."""
    text = _LINK.sub(lambda m: m.group(1), heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, numbered as GitHub numbers repeated headings."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    for _, line in prose_lines(path):
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            found.add(f"{base}-{seen[base]}" if seen[base] else base)
            seen[base] += 1
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    """Link targets written outside code, with their line numbers."""
    for number, line in prose_lines(path):
        # A code span may hold a link inside it: keep the span's text out of the search.
        for match in _LINK.finditer(_CODE_SPAN.sub(lambda m: m.group(0).replace("](", "] ("), line)):
            yield number, match.group(2)


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """What is wrong with each relative link of one file (missing file, outside ``root``, bad anchor)."""
    problems: list[str] = []
    for number, target in links(path):
        if _SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.is_relative_to(root):
            problems.append(f"{where} points outside the repository")
        elif not resolved.exists():
            problems.append(f"{where} names a missing file")
        elif anchor and resolved.suffix != ".md":
            problems.append(f"{where} has an anchor on a file that is not Markdown")
        elif anchor and anchor not in anchors(resolved):
            problems.append(f"{where} names no heading of {resolved.relative_to(root)}")
    return problems


def prose_items(path: Path) -> Iterator[str]:
    """Paragraphs, list items and table rows, whitespace collapsed."""
    item: list[str] = []
    for _, line in [*prose_lines(path), (0, "")]:
        if not line.strip() or _ITEM_START.match(line) or _HEADING.match(line):
            if item:
                yield " ".join(" ".join(item).split())
            item = [line] if line.strip() and not _HEADING.match(line) else []
        else:
            item.append(line)


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_page_exists(name: str) -> None:
    """Each reference page named by the README exists under docs/ and starts with a title."""
    page = REPO / "docs" / f"{name}.md"
    assert page.is_file(), f"docs/{name}.md is missing"
    assert page.read_text(encoding="utf-8").startswith("# "), f"docs/{name}.md should start with a # title"


def test_readme_is_a_front_page() -> None:
    """The README stays short enough to read at once, and links every reference page."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move reference text to docs/"
    targets = {target.partition("#")[0] for _, target in links(README)}
    missing = [name for name in REFERENCE if f"docs/{name}.md" not in targets]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link resolves to a file of the repository, and every #anchor to a heading there."""
    assert not broken_links(path), "\n".join(broken_links(path))


def test_link_checker_catches_a_broken_anchor(tmp_path: Path) -> None:
    """The checker itself fails on a wrong anchor and a missing file, and accepts GitHub's slugs."""
    page = tmp_path / "probe.md"
    page.write_text(
        "# Caller gate: `ALLOWED_CALLERS`\n\n## Way 1: the `guest-reset` command line\n\n"
        "[ok](#caller-gate-allowed_callers) [ok](#way-1-the-guest-reset-command-line) "
        "[bad](#caller-gate) [gone](missing.md) `[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert "#caller-gate names no heading" in problems[0]
    assert "missing.md names a missing file" in problems[1]


def test_azd_outputs_named_in_the_docs_exist() -> None:
    """Every `azd env get-value X` in the README and docs/ names an output of infra/main.bicep."""
    outputs = set(re.findall(r"(?m)^output (\w+)", (REPO / "infra" / "main.bicep").read_text(encoding="utf-8")))
    used = {
        name
        for path in doc_files()
        for name in re.findall(r"azd env get-value (\w+)", path.read_text(encoding="utf-8"))
    }
    assert used, "the deploy guide should read azd outputs"
    assert used <= outputs, f"not outputs of main.bicep: {sorted(used - outputs)}"


def test_no_paragraph_is_written_twice() -> None:
    """Each fact is written once: no paragraph, list item or table row of some length appears in two places."""
    places: dict[str, list[str]] = {}
    for path in doc_files():
        for item in prose_items(path):
            if len(item) >= REPEAT_MIN_CHARS:
                places.setdefault(item, []).append(str(path.relative_to(REPO)))
    repeated = {item[:80]: where for item, where in places.items() if len(where) > 1}
    assert not repeated, f"written more than once: {repeated}"
