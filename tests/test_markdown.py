"""The one markdown table formatter: its lines, column alignment and refused input."""
import pytest

from arcvq_plugin.markdown import markdown_table


def test_lines_of_a_table():
    assert markdown_table(["Method", "PSNR"], [["VQ-VAE", "26.48"], ["ArcVQ-VAE", "27.10"]]) == [
        "| Method | PSNR |", "|---|---|", "| VQ-VAE | 26.48 |", "| ArcVQ-VAE | 27.10 |"]


def test_alignment_and_empty_cells():
    assert markdown_table(["steps", "schedule"], [["250", "paper"]], align="rl") == [
        "| steps | schedule |", "|---:|---|", "| 250 | paper |"]
    assert markdown_table(["", ""], [["command", ""]]) == ["| | |", "|---|---|", "| command | |"]


@pytest.mark.parametrize("header, rows, align, message", [
    ([], [], None, "header must name at least one column"),
    (["a", "b"], [["1"]], None, "a row has 1 cells, the header 2 columns"),
    (["a", "b"], [], "l", "align must be one letter 'l' or 'r' per column (2), got 'l'"),
    (["a", "b"], [], "lc", "align must be one letter 'l' or 'r' per column (2), got 'lc'"),
])
def test_refused(header, rows, align, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        markdown_table(header, rows, align=align)
