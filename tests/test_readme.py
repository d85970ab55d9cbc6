"""The Python snippets of the README and of docs/*.md run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPETS = [(page.relative_to(ROOT).as_posix(), i, code) for page in PAGES
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


def test_readme_has_python_snippets():
    assert any(page == "README.md" for page, _, _ in SNIPPETS)


@pytest.mark.parametrize("page,index,code", SNIPPETS, ids=[f"{p}#{i}" for p, i, _ in SNIPPETS])
def test_snippet_runs(page, index, code):
    exec(compile(code, f"{page}[python #{index}]", "exec"), {})
