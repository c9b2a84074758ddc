"""The README and docs/: short enough to read, every link inside the repository resolves
(files and #anchors), and nothing points outside it."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return LINK.findall(text)


def test_the_readme_is_short_and_has_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make run " in text and "make test " in text


def test_slug():
    assert slug("Syscall numbers: 436 on v5.4, 451 on 6.1, 463 on 6.12") == \
        "syscall-numbers-436-on-v54-451-on-61-463-on-612"
    assert slug("L1's ground truth") == "l1s-ground-truth"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_inside_the_repository(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:: not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(REPO) if dest.is_relative_to(REPO) else None
        if rel is None:
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {rel}")
    assert not bad, f"{page.name}: " + "; ".join(bad)


def test_the_link_check_can_fail(tmp_path, monkeypatch):
    page = REPO / "docs" / "__probe__.md"
    try:
        page.write_text("[a](kernels.md#no-such-heading) [b](missing.md) [c](../../outside.md)\n")
        with pytest.raises(AssertionError) as e:
            test_links_resolve_inside_the_repository(page)
        msg = str(e.value)
        assert "no heading #no-such-heading" in msg and "missing.md: no such file" in msg
        assert "outside the repository" in msg
    finally:
        page.unlink()
