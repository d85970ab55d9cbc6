"""Smoke test: ``python -m benchmarks --quick`` runs every benchmark on toy sizes and writes a
report (no timing assertions; the real figures are in docs/BENCHMARKS.md)."""
import importlib.util
import re

import torch

from benchmarks.__main__ import run


def test_quick_run_writes_every_section_and_equal_gradients(tmp_path):
    threads = torch.get_num_threads()
    output = tmp_path / "BENCHMARKS.md"
    text = run(quick=True, output=output, threads=1)
    assert output.read_text() == text
    assert torch.get_num_threads() == threads  # restored
    for heading in ("## 1. VQGAN train step", "## 2. ArcLoss forward + backward",
                    "## 3. Quantiser forward + backward", "| torch |", "Toy sizes"):
        assert heading in text
    if importlib.util.find_spec("vector_quantize_pytorch") is None:  # benchmark-only dependency
        assert "Not run: vector-quantize-pytorch is not installed" in text
    else:
        assert re.search(r"\| 64 \| 8 \| 32 \| 16 \| [\d,]+ \| [\d,]+ \| [\d.]+: ", text)
    row = next(line for line in text.splitlines() if line.startswith("| 64 | 256 | 8 | 32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    grad_diff = float(cells[12].split()[0])
    dense_loss, chunked_loss = (float(v) for v in cells[13].split("/"))
    assert grad_diff < 1e-6 and abs(dense_loss - chunked_loss) < 1e-5
    assert re.search(r"\| tiny \(32 px, ch 32\) \| 2 x 32 px \| 16x16 \| 1 \|", text)
