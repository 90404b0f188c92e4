"""Every relative link in README.md and docs/*.md resolves: to a file or folder inside this
repository (a clone has nothing outside it), and a `#anchor` to a heading of the target markdown
file. Reads text only: no models, no network."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional "title" follows)
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """The text without code, where a bracket followed by a parenthesis is not a link."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: pathlib.Path) -> set:
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    anchors, seen = set(EXPLICIT_ANCHOR.findall(text)), {}
    for heading in HEADING.findall(text):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")  # GitHub numbers repeats
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page: pathlib.Path):
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        yield target


def test_the_pages_have_links():
    """The scan itself works: the README links to several docs."""
    assert len(PAGES) > 5
    readme_links = list(_links(ROOT / "README.md"))
    assert sum(link.startswith("docs/") for link in readme_links) >= 8, readme_links


def test_slug_matches_github():
    assert _slug("Switching an OpenRLHF PPO command to SRPPO") == "switching-an-openrlhf-ppo-command-to-srppo"
    assert _slug("The plugin's flags (`--coherent.*`)") == "the-plugins-flags---coherent"
    assert _slug("Scorer throughput on one H200") == "scorer-throughput-on-one-h200"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if resolved != ROOT and ROOT not in resolved.parents:
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)
