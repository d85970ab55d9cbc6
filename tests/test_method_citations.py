"""Every citation of METHOD.md in the code, configs, scripts and docs points at something that exists
in the repository's docs/METHOD.md: a numbered section, or an equation number its headings name."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
CITED_IN = ("arcvq_plugin", "configs", "scripts", "benchmarks", "tests", "docs", "patches", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".sh", ".patch", ".cfg"}
SECTION = re.compile(r"METHOD\.md,?\s+(?:sections?\s+)?(\d+)(?:\s*(-|and|,)\s*(\d+))?")
EQUATIONS = re.compile(r"METHOD\.md,?\s+eqs?\.\s+(\d+)(?:\s*(-)\s*(\d+))?")


def _cited_files() -> list[Path]:
    files = []
    for name in CITED_IN:
        path = ROOT / name
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in SUFFIXES]
    return [p for p in files if p != METHOD and p.is_file()]


def _numbers(match: re.Match) -> list[int]:
    """``N`` -> [N]; ``N-M`` -> N..M; ``N and M`` / ``N, M`` -> [N, M]."""
    first = int(match.group(1))
    if not match.group(3):
        return [first]
    last = int(match.group(3))
    return list(range(first, last + 1)) if match.group(2) == "-" else [first, last]


def method_sections(text: str) -> set[int]:
    """Section numbers of ``## N. Title`` headings."""
    return {int(n) for n in re.findall(r"^## (\d+)\.", text, flags=re.MULTILINE)}


def method_equations(text: str) -> set[int]:
    """Equation numbers named in headings, e.g. ``(eqs. 10-12, 17-18)`` or ``(eq. 4)``."""
    found = set()
    for heading in re.findall(r"^## .*$", text, flags=re.MULTILINE):
        for group in re.findall(r"\(eqs?\. ([^)]*)\)", heading):
            for part in group.split(","):
                ends = [int(x) for x in re.findall(r"\d+", part)]
                found.update(range(ends[0], ends[-1] + 1))
    return found


def citations(text: str) -> tuple[set[int], set[int]]:
    """(sections, equations) that ``text`` cites as ``METHOD.md section N`` / ``METHOD.md eqs. N-M``."""
    sections = {n for m in SECTION.finditer(text) for n in _numbers(m)}
    equations = {n for m in EQUATIONS.finditer(text) for n in _numbers(m)}
    return sections, equations


def test_the_repository_holds_the_spec_its_code_cites():
    text = METHOD.read_text()
    sections, equations = method_sections(text), method_equations(text)
    cited_anywhere = False
    missing = []
    for path in _cited_files():
        content = path.read_text(errors="ignore")
        if "METHOD.md" not in content:
            continue
        cited_anywhere = True
        cited_sections, cited_equations = citations(content)
        missing += [f"{path.relative_to(ROOT)}: section {n}" for n in sorted(cited_sections - sections)]
        missing += [f"{path.relative_to(ROOT)}: eq. {n}" for n in sorted(cited_equations - equations)]
    assert cited_anywhere
    assert not missing, f"citations of METHOD.md that point nowhere: {missing}"


def test_the_citation_reader_finds_sections_and_equations():
    sections, equations = citations("see METHOD.md sections 3 and 5; METHOD.md eqs. 10-12; METHOD.md section 4")
    assert sections == {3, 4, 5} and equations == {10, 11, 12}
    spec = "## 3. BBNR (eqs. 5-7)\n## 4. ArcLoss (eqs. 10-12, 17-18)\n"
    assert method_sections(spec) == {3, 4}
    assert method_equations(spec) == {5, 6, 7, 10, 11, 12, 17, 18}
    assert citations("METHOD.md sections 1-5")[0] == {1, 2, 3, 4, 5}
    assert citations("METHOD.md sections 3 and 5")[0] == {3, 5}
