"""Every reference in the repository resolves inside the repository.

A newcomer reads a fresh clone, so a link or a file named in a comment must point at something
that clone has:

- every relative link in a Markdown file points at an existing file or folder, and a `#anchor`
  into a Markdown file names one of its headings (GitHub's slug rules);
- every Markdown file named in Markdown text, or in the comments and docstrings of Python,
  Dockerfile, YAML, shell and other `#`-comment files, exists: a path (`docs/design.md`) relative
  to the file or to the repository root, a bare name anywhere in the repository;
- nothing points outside the repository.

The files are those git tracks plus the untracked ones it does not ignore. Failures name
`file:line`, the reference and what is wrong with it.
"""

from __future__ import annotations

import io
import posixpath
import re
import subprocess
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "../" + "shared"  # the reference notes that live next to the checkout, never in it

HASH_COMMENT_SUFFIXES = {".yml", ".yaml", ".sh", ".bash", ".toml", ".conf", ".cfg", ".ini"}
HASH_COMMENT_NAMES = {"Dockerfile", ".dockerignore", ".gitignore"}

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_LINK = re.compile(r"\b(?:href|src)\s*=\s*\"([^\"]*)\"")
_HTML_ANCHOR = re.compile(r"\b(?:id|name)\s*=\s*\"([^\"]+)\"")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s)>\]\"'`]+")
_MD_MENTION = re.compile(
    r"(?<![\w.~/-])((?:\.{1,2}/)*(?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w-])(?:#([\w-]+))?")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    reference: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reference} ({self.why})"


# ---- the files ------------------------------------------------------------------------------

@cache
def repo_files() -> tuple[str, ...]:
    """Tracked files plus untracked ones git does not ignore, as POSIX paths from the root."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
            capture_output=True, check=True, timeout=60).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the files to check come from git")
    return tuple(sorted({p for p in listed.split("\0") if p and (ROOT / p).is_file()}))


@cache
def repo_paths() -> frozenset[str]:
    """Every file and every folder above one (a link may point at a folder)."""
    paths = set(repo_files())
    for file in repo_files():
        parent = posixpath.dirname(file)
        while parent:
            paths.add(parent)
            parent = posixpath.dirname(parent)
    return frozenset(paths)


@cache
def by_name() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for file in repo_files():
        names.setdefault(posixpath.basename(file), []).append(file)
    return names


@cache
def text(path: str) -> str | None:
    try:
        return (ROOT / path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def markdown_files() -> list[str]:
    return [p for p in repo_files() if p.lower().endswith((".md", ".markdown"))]


# ---- Markdown ---------------------------------------------------------------------------------

def github_slug(heading: str) -> str:
    """GitHub's heading id: the rendered text, lower-cased, punctuation dropped, spaces → '-'."""
    plain = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    plain = re.sub(r"<[^>]+>", "", plain).strip().lower()
    kept = "".join(ch for ch in plain if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def markdown_lines(source: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block)."""
    fence: str | None = None
    for number, line in enumerate(source.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            yield number, line, True
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            yield number, line, True
        else:
            yield number, line, False


@cache
def anchors(path: str) -> frozenset[str]:
    """The `#anchor`s a Markdown file offers: heading slugs (duplicates get -1, -2…) and
    explicit HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    previous = ""

    def add(heading: str) -> None:
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")

    for _, line, in_code in markdown_lines(text(path) or ""):
        if in_code:
            previous = ""
            continue
        found.update(_HTML_ANCHOR.findall(line))
        atx = _ATX.match(line)
        if atx:
            add(atx.group(2))
        elif _SETEXT.match(line) and previous.strip() and not re.match(
                r"^\s*([-*+>|#]|\d+[.)])", previous):
            add(previous)
        previous = "" if atx else line
    return frozenset(found)


def markdown_links(path: str) -> Iterator[tuple[int, str]]:
    for number, line, in_code in markdown_lines(text(path) or ""):
        if in_code:
            continue
        outside_code = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for pattern in (_INLINE_LINK, _REFERENCE_DEF, _HTML_LINK):
            for match in pattern.finditer(outside_code):
                yield number, match.group(1).strip("<>")


def check_link(source: str, line: int, target: str) -> Problem | None:
    if not target or _SCHEME.match(target) or target.startswith("//"):
        return None  # a web address, not a file of this repository
    raw_path, _, anchor = target.partition("#")
    raw_path = unquote(raw_path.split("?", 1)[0])
    if not raw_path:
        resolved = source
    else:
        base = "" if raw_path.startswith("/") else posixpath.dirname(source)
        resolved = posixpath.normpath(posixpath.join(base, raw_path.lstrip("/")))
        if resolved == ".." or resolved.startswith("../"):
            return Problem(source, line, target, "points outside the repository")
        if resolved not in repo_paths():
            return Problem(source, line, target, f"no such file or folder: {resolved}")
    return check_anchor(source, line, target, resolved, unquote(anchor))


def check_anchor(source: str, line: int, reference: str, resolved: str,
                 anchor: str) -> Problem | None:
    if not anchor or not resolved.lower().endswith(".md"):
        return None
    if anchor not in anchors(resolved):
        return Problem(source, line, reference, f"{resolved} has no heading #{anchor}")
    return None


# ---- Markdown files named in text and comments ------------------------------------------------

def mentions(source: str, line: int, content: str) -> Iterator[Problem]:
    """Problems with the Markdown files `content` names (web addresses aside)."""
    urls = [m.span() for m in _URL.finditer(content)]
    for match in _MD_MENTION.finditer(content):
        if any(start <= match.start() < end for start, end in urls):
            continue
        problem = check_mention(source, line, match.group(0), match.group(1),
                                match.group(2) or "")
        if problem is not None:
            yield problem


def check_mention(source: str, line: int, reference: str, name: str,
                  anchor: str) -> Problem | None:
    if "/" in name:
        here = posixpath.dirname(source)
        candidates = [posixpath.normpath(posixpath.join(base, name.lstrip("/")))
                      for base in ([""] if name.startswith("/") else [here, ""])]
        if all(c == ".." or c.startswith("../") for c in candidates):
            return Problem(source, line, reference, "points outside the repository")
        found = [c for c in candidates if c in repo_files()]
        if not found:
            return Problem(source, line, reference, "no such file in the repository")
    else:
        found = nearest_first(source, by_name().get(name, []))
        if not found:
            return Problem(source, line, reference, "no file of that name in the repository")
    if anchor and all(check_anchor(source, line, reference, f, anchor) for f in found):
        return check_anchor(source, line, reference, found[0], anchor)
    return None


def nearest_first(source: str, files: list[str]) -> list[str]:
    """Files of one name, those in the source's folder or above it first."""
    folder = posixpath.dirname(source)
    above = []
    while True:
        above.append(posixpath.join(folder, ""))
        if not folder:
            break
        folder = posixpath.dirname(folder)
    return sorted(files, key=lambda f: (posixpath.join(posixpath.dirname(f), "") not in above, f))


def markdown_mentions(path: str) -> Iterator[Problem]:
    for number, line, _ in markdown_lines(text(path) or ""):
        links_blanked = line
        for pattern in (_INLINE_LINK, _REFERENCE_DEF, _HTML_LINK):
            links_blanked = pattern.sub(lambda m: " " * len(m.group(0)), links_blanked)
        yield from mentions(path, number, links_blanked)


def python_comments(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and every docstring-like string statement."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        yield from enumerate(source.splitlines(), 1)  # unparsable: check every line
        return
    skip = {tokenize.NL, tokenize.COMMENT}
    significant = [t for t in tokens if t.type not in skip]
    statement_start = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for i, tok in enumerate(significant):
        if tok.type != tokenize.STRING:
            continue
        before = significant[i - 1].type if i else tokenize.NEWLINE
        after = significant[i + 1].type if i + 1 < len(significant) else tokenize.ENDMARKER
        if before in statement_start and after in (tokenize.NEWLINE, tokenize.ENDMARKER):
            for offset, part in enumerate(tok.string.split("\n")):
                yield tok.start[0] + offset, part
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def is_hash_comment_file(path: str) -> bool:
    name = posixpath.basename(path)
    if name in HASH_COMMENT_NAMES or name.startswith("Dockerfile."):
        return True
    if posixpath.splitext(name)[1] in HASH_COMMENT_SUFFIXES:
        return True
    if "." not in name:  # a script: `#!/usr/bin/env bash`
        first = (text(path) or "").partition("\n")[0]
        return first.startswith("#!") and re.search(r"\b(ba|z|da)?sh\b", first) is not None
    return False


def hash_comments(source: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(source.splitlines(), 1):
        match = re.search(r"(?:^|\s)#(.*)$", line)
        if match:
            yield number, match.group(1)


def comment_problems() -> Iterator[Problem]:
    for path in repo_files():
        source = text(path)
        if source is None:
            continue
        if path.endswith(".py"):
            comments = python_comments(source)
        elif is_hash_comment_file(path):
            comments = hash_comments(source)
        else:
            continue
        for number, content in comments:
            yield from mentions(path, number, content)


# ---- the tests --------------------------------------------------------------------------------

def report(problems: list[Problem]) -> str:
    unique = sorted(set(problems), key=lambda p: (p.path, p.line, p.reference))
    return f"{len(unique)} broken reference(s):\n" + "\n".join(map(str, unique))


def test_the_repository_has_markdown_to_check() -> None:
    assert "README.md" in markdown_files()
    assert "docs/method.md" in markdown_files()


def test_relative_markdown_links_resolve() -> None:
    problems = [p for path in markdown_files() for line, target in markdown_links(path)
                if (p := check_link(path, line, target)) is not None]
    assert not problems, report(problems)


def test_markdown_files_named_in_markdown_text_exist() -> None:
    problems = [p for path in markdown_files() for p in markdown_mentions(path)]
    assert not problems, report(problems)


def test_markdown_files_named_in_code_comments_exist() -> None:
    problems = list(comment_problems())
    assert not problems, report(problems)


def test_nothing_refers_to_notes_outside_the_repository() -> None:
    problems = [Problem(path, number, OUTSIDE, "outside the repository")
                for path in repo_files() if (source := text(path)) is not None
                for number, line in enumerate(source.splitlines(), 1) if OUTSIDE in line]
    assert not problems, report(problems)


# ---- the checker itself -----------------------------------------------------------------------

@pytest.mark.parametrize(("heading", "slug"), [
    ("HTTP API (v1)", "http-api-v1"),
    ("Every [choice] in one place", "every-choice-in-one-place"),
    ("Deploy › Auth", "deploy--auth"),
    ("`min_version` and ω(t)", "min_version-and-ωt"),
    ("See [the docs](docs/design.md) now", "see-the-docs-now"),
])
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_the_checker_finds_what_it_should() -> None:
    assert check_link("README.md", 1, "docs/method.md#online-update") is None
    assert check_link("docs/design.md", 1, "../README.md#http-api-v1") is None
    assert check_link("docs/design.md", 1, "method.md#no-such-heading") is not None
    assert check_link("README.md", 1, "docs/nothing-here.md") is not None
    assert check_link("README.md", 1, "../elsewhere/notes.md") is not None
    assert check_link("README.md", 1, "https://example.com/x.md") is None
    assert list(mentions("bench/wire.py", 1, "see docs/measurements.md#batching")) == []
    assert list(mentions("bench/wire.py", 1, "see RESULTS.md")) == []
    assert list(mentions("bench/wire.py", 1, "see NOWHERE.md and docs/nowhere.md")) != []
    assert list(mentions("bench/wire.py", 1, "https://github.com/o/r/blob/main/NOWHERE.md")) == []
    comments = dict(python_comments('"""Doc, see a.md."""\nx = "b.md"  # c.md\n'))
    assert comments == {1: '"""Doc, see a.md."""', 2: "# c.md"}
