"""Every document the code, the examples and the README refer to is in the repository, and every
section link into docs/ names a heading that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["README.md", "Makefile", "setup.cfg", "onn_core", "simulator", "drivers", "calibration", "hil",
           "benchmarks", "examples", "docs", "tests"]
#: Markdown files the toolkit writes as outputs (run folders, calibration reports), not documents.
OUTPUT_NAMES = {"report.md", "summary.md"}
REFERENCE = re.compile(r"(?<![\w/.\-])((?:[\w.\-]+/)*[\w\-]+\.md)(#[A-Za-z0-9_\-]+)?")


def source_files():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in path.rglob("*") if p.suffix in (".py", ".md", ".yaml", ".cfg") and p.is_file())


def anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def resolve(document: str, referrer: Path) -> Path | None:
    for base in (referrer.parent, ROOT, ROOT / "docs"):
        candidate = (base / document).resolve()
        if candidate.is_file() and ROOT in candidate.parents:
            return candidate
    return None


def test_the_docs_exist():
    for name in ("method.md", "bench.md", "migration.md", "studies.md"):
        assert (ROOT / "docs" / name).is_file(), name


def test_every_referenced_document_and_section_is_in_the_repository():
    if not (ROOT / "docs").is_dir():
        pytest.skip("not a source checkout")
    problems = []
    for path in source_files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in REFERENCE.finditer(line):
                document, anchor = match.group(1), match.group(2)
                if Path(document).name in OUTPUT_NAMES:
                    continue
                target = resolve(document, path)
                where = f"{path.relative_to(ROOT)}:{number}"
                if target is None:
                    problems.append(f"{where}: {document} is not in the repository")
                elif anchor and anchor[1:] not in anchors(target):
                    problems.append(f"{where}: {document} has no section {anchor}")
    assert not problems, "\n".join(problems)
