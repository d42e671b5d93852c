"""The documents stand on their own: every repository file a document or a comment cites
exists, every relative link resolves, and nothing points outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

# A path into the repository as docs and comments write it: `docs/<name>.md`,
# `daemon/asrd/<module>.py`, `benchmarks/results/`. Runtime paths (/var/lib/asrd, var/results)
# start elsewhere.
CITED = re.compile(
    r"(?<![\w./<-])((?:docs|daemon|tests|benchmarks|scripts|config|systemd|deploy)/[\w./-]*[\w/])"
)
MARKDOWN_NAME = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
TEXT_SUFFIXES = {".md", ".py", ".toml", ".txt", ".yaml", ".yml", ".service", ".sh", ""}


def _files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths = [ROOT / name for name in listed]
    # Ignore files (.gitignore, .dockerignore) name what may not exist: they are left out.
    return [
        p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith(".")
    ]


FILES = _files()
DOCS = [p for p in FILES if p.suffix == ".md"]
NAMES = {p.name for p in FILES}


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def test_the_scan_sees_the_documents_and_the_code() -> None:
    names = {str(p.relative_to(ROOT)) for p in FILES}
    assert {"README.md", "docs/operations.md", "daemon/asrd/cli.py", "Makefile"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_repository_file_exists(path: Path) -> None:
    text = _text(path)
    missing = sorted({c for c in CITED.findall(text) if not (ROOT / c).exists()})
    assert not missing, f"{path.relative_to(ROOT)} cites files that do not exist: {missing}"
    unknown = sorted({n for n in MARKDOWN_NAME.findall(text) if n not in NAMES})
    assert not unknown, f"{path.relative_to(ROOT)} names documents not in the repository: {unknown}"
    outside = "../" + "shared"  # spelled in two parts so this file passes its own check
    assert outside not in text, f"{path.relative_to(ROOT)} points outside the repository"


def _anchors(doc: Path) -> set[str]:
    """The anchors of a document's headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.*)$", _text(doc), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(_text(doc)):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        missing_heading = anchor and linked.suffix == ".md" and anchor not in _anchors(linked)
        if not linked.exists() or missing_heading:
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files or headings: {broken}"
