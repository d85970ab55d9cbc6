"""Smoke test of the whole GPU-benchmark plumbing on the CPU: ``scripts/gpu_benchmarks.sh --device cpu
--quick`` runs ``python -m benchmarks --device cpu --quick`` (every benchmark on toy sizes, the CPU
paths of section 1) and section 2 (here a stand-in module that records its arguments: the real
reproduction's CPU path has tests of its own), and writes every result into one flat folder.
No timing assertions: the real figures are in docs/BENCHMARKS.md."""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from benchmarks.document import NOT_MEASURED_MARK, parse_sections

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_benchmarks.sh"

FAKE_REPRODUCE = '''
import json, os, pathlib, sys, time
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--out") + 1])
(out / "checkpoints").mkdir(parents=True)
(out / "table.md").write_text("| Method | PSNR |\\n")
(out / "checkpoints" / "vq_seed1.ckpt").write_bytes(b"weights")
(out / "args.json").write_text(json.dumps(args))
print("fake reproduction started", flush=True)
time.sleep(float(os.environ.get("FAKE_REPRODUCE_SECONDS", "0")))
'''


def run_script(args, tmp_path, **env):
    """``bash scripts/gpu_benchmarks.sh ARGS`` with this Python and the stand-in section-2 module."""
    fake = tmp_path / "fake_module"
    fake.mkdir(exist_ok=True)
    (fake / "fake_reproduce.py").write_text(FAKE_REPRODUCE)
    environment = {k: v for k, v in os.environ.items() if k != "OUT"}
    environment.update(PYTHON=sys.executable, ARCVQ_REPRODUCE_MODULE="fake_reproduce", PYTHONPATH=str(fake),
                       TMPDIR=str(tmp_path), **env)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_quick_cpu_run_writes_every_result_into_one_folder(tmp_path):
    out = tmp_path / "out"
    proc = run_script(["--device", "cpu", "--quick", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "BENCHMARKS.md", "benchmarks.json", "benchmarks.log", "machine.txt", "reproduce.log", "reproduce.tar.gz",
        "status.txt"]
    status = (out / "status.txt").read_text()
    assert "device=cpu\nquick=1\n" in status
    assert re.search(r"^section_1 rc=0 seconds=\d+ limit=240$", status, re.M)
    assert re.search(r"^section_2 rc=0 seconds=\d+ limit=\d+$", status, re.M)
    assert re.search(r"^torch 2\.\d+", (out / "machine.txt").read_text(), re.M)

    # section 2: the reproduction's arguments, its folder packed without checkpoints
    with tarfile.open(out / "reproduce.tar.gz") as tar:
        names = tar.getnames()
        args = json.loads(tar.extractfile("reproduce/args.json").read())
    assert "reproduce/table.md" in names and not any(n.endswith(".ckpt") for n in names)
    assert args == ["--device", "cpu", "--budget", "reduced", "--limit-train", "256", "--limit-test", "64",
                    "--out", str(out / "reproduce"), "--rows", "vq", "--seeds", "1", "--no-progress-bar"]

    # section 1: the CPU section of the report, the CUDA section kept from docs/ (not measured there)
    text = (out / "BENCHMARKS.md").read_text()
    sections = parse_sections(text)
    cpu = sections["cpu"]
    if "cuda" not in parse_sections((ROOT / "docs" / "BENCHMARKS.md").read_text()):
        assert "cuda" not in sections and NOT_MEASURED_MARK in text
    for heading in ("### Targets", "### 1. VQGAN train step", "### 2. ArcLoss forward + backward",
                    "### 3. Quantisers forward + backward", "| torch |", "Toy sizes"):
        assert heading in cpu
    assert re.search(r"\| tiny \(32 px, ch 32\) \| ArcQuantizer \| 2 x 32 px \| 16x16 \| 1 \| [\d.]+; ", cpu)
    # the discriminator-reconstruction modes: both timed, the reuse arm over the fresh one, no target
    assert re.search(r"\| tiny \(32 px, ch 32\): discriminator reconstructions \| ArcQuantizer, fresh \| .* \| baseline \| - \|", cpu)
    assert re.search(r"\| tiny \(32 px, ch 32\): discriminator reconstructions \| ArcQuantizer, reuse \| .* \| [\d.]+ \| \(no target\) \|", cpu)
    row = next(line for line in cpu.splitlines() if line.startswith("| 64 | 256 | 8 | 32 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    grad_diff = float(cells[13].split()[0])
    dense_loss, chunked_loss = (float(v) for v in cells[14].split("/"))
    assert grad_diff < 1e-6 and abs(dense_loss - chunked_loss) < 1e-5
    for precision in ("fp32", "bf16"):
        row = next(line for line in cpu.splitlines() if line.startswith(f"| 64 | 8 | 32 | 16 | {precision} |"))
        assert row.rstrip().endswith("| yes |")  # every arm finite
        assert re.match(r"\| 64 \| 8 \| 32 \| 16 \| \w+ \| [\d.]+; [\d.]+ - [\d.]+ \| [\d.]+; ", row)
    samples = json.loads((out / "benchmarks.json").read_text())
    assert samples["plan"]["device"] == "cpu" and len(samples["quantizers"]) == 2
    assert samples["quantizers"][1]["dtype"] == "bf16"
    assert all(len(v) == 1 for v in samples["quantizers"][0]["seconds"]["samples"].values())
    assert "### Targets" in proc.stdout  # the summary printed last
