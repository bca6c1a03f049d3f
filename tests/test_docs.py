"""The documentation's relative links resolve: every ``[text](path#anchor)`` in README.md, CHANGELOG.md and
docs/*.md names a file of the repository and, where it has one, a heading of that file (GitHub's anchors).
External links are listed in the output for a reader to check (no network here). The pages also keep to
what a reader takes in: the front page at most 220 lines, a docs page at most 250, no internal issue
numbers, and history in the changelog rather than in the pages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from knowinject.core import paths

PAGES = [paths.ROOT / "README.md", paths.ROOT / "CHANGELOG.md", *sorted((paths.ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but hyphens and underscores dropped, spaces to hyphens,
    repeats numbered."""
    out, seen = set(), {}
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


def test_every_relative_link_resolves_to_a_file_and_anchor():
    broken, external = [], []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z]+:", target):
                external.append(f"{page.relative_to(paths.ROOT)}: {target}")
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(paths.ROOT)}: {target} (no file {path})")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(paths.ROOT)}: {target} (no heading #{anchor} in {path or page.name})")
    print("external links, for a reader to check:\n  " + "\n  ".join(sorted(set(external))))
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A heading, with punctuation\n\n[ok](#a-heading-with-punctuation) [bad](#nope) [gone](missing.md)\n")
    assert _anchors(page) == {"a-heading-with-punctuation"}
    assert _links(page) == ["#a-heading-with-punctuation", "#nope", "missing.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_state_this_version(page):
    text = page.read_text()
    limit = 220 if page.name == "README.md" else None if page.name == "CHANGELOG.md" else 250
    if limit:
        assert len(text.splitlines()) <= limit, f"{page.name}: {len(text.splitlines())} lines, over {limit}"
    if page.name != "CHANGELOG.md":
        assert not re.search(r"issue #\d+", text), f"{page.name} cites an internal issue number"
        assert "version before" not in text, f"{page.name} narrates an older version: that is the changelog's"


def test_the_front_page_shows_the_claims_figure_before_its_table():
    text = (paths.ROOT / "README.md").read_text()
    assert "figures/claims.png" in text and text.index("figures/claims.png") < text.index("<!-- findings:start -->")
    header = text.split("<!-- findings:start -->", 1)[1].strip().splitlines()[0]
    assert header.count("|") - 1 <= 6, f"the claims table has {header.count('|') - 1} columns"
    assert "mybinder.org/v2/gh" not in text, "the Binder badge links to a repository that does not exist"


def test_the_changelog_has_dated_entries_and_this_version():
    text = (paths.ROOT / "CHANGELOG.md").read_text()
    entries = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, flags=re.M)
    assert len(entries) >= 2
    version = re.search(r'^version = "([^"]+)"', (paths.ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert entries[0][0] == version, f"pyproject.toml is at {version}, the changelog's newest entry {entries[0][0]}"
