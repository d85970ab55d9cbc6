"""The benchmark report: each target's verdict from hand-made results (met, MISSED, not measured),
the sections of both devices, and docs/BENCHMARKS.md's per-device sections (each device's kept
when the other is written; nothing outside the written section changed; nothing that is not a
report overwritten)."""
import os
import re

import pytest

from benchmarks import document
from benchmarks.arc_loss_memory import ArcLossCase, ArcLossResult
from benchmarks.document import NOT_MEASURED_MARK, compose, copy_section, parse_sections, write_section
from benchmarks.measure import Comparison
from benchmarks.plans import plan_for
from benchmarks.quantizers import QuantizerCase, QuantizerResult
from benchmarks.report import DeviceRun, machine_rows, not_measured_sections, render_section
from benchmarks.targets import GIB, check_targets
from benchmarks.train_step import TrainStepResult

from arcvq_plugin.machine import machine_description

OOM = "out of memory (CUDA out of memory. Tried to allocate 12.21 GiB)"
H200_MACHINE = {**machine_description(), "device": "cuda:0", "cuda": "NVIDIA H200", "cuda_build": "13.0",
                "cudnn": 91300, "gpu": "NVIDIA H200 (140 GiB, compute capability 9.0, 132 multiprocessors)"}


def comparison(failures=None, **medians):
    return Comparison({arm: [v * 0.99, v, v * 1.01] for arm, v in medians.items()}, dict(failures or {}))


def quantizer(k, d, dtype, dense_gib, chunked_gib, finite=True, dense_fails=False):
    case = QuantizerCase(k, d, 32, 32, 2048)
    times = dict(ArcQuantizer=0.010, VectorQuantizer2=0.008, VectorQuantize=0.020)
    times["ArcQuantizer chunked"] = 0.012
    failures = {}
    if dense_fails:
        del times["ArcQuantizer"]
        failures["ArcQuantizer"] = OOM
    peaks = {arm: gib * GIB for arm, gib in (("ArcQuantizer", dense_gib), ("ArcQuantizer chunked", chunked_gib))
             if arm in times}
    oks = {arm: finite if arm.startswith("Arc") else True for arm in times}
    return QuantizerResult(case, dtype, comparison(failures, **times), peaks, oks)


def cuda_run(step_ratio=1.01, chunked_16k_gib=0.2, chunked_100k_gib=1.5, bf16_finite=True, dense_16k_fails=False,
             dense_100k_fails=False):
    plan = plan_for("cuda", quick=False)
    train = [TrainStepResult(plan.train[0], 30, "32x32", comparison(VectorQuantizer2=0.5, ArcQuantizer=0.5 * step_ratio),
                             comparison(VectorQuantizer2=0.001, ArcQuantizer=0.004))]
    arc = [ArcLossResult(ArcLossCase(16384, 32768, d, 2048),
                         comparison(dense=0.02, chunked=0.022, **{"one chunk": 0.021}),
                         comparison(dense=2.3 * GIB, chunked=0.15 * GIB, **{"one chunk": 2.3 * GIB}),
                         {"dense": 4.5, "chunked": 4.5}, 3e-11, 1e-4, "max_memory_allocated") for d in (16, 256)]
    quant = []
    for dtype in ("fp32", "bf16"):
        quant += [quantizer(1024, 16, dtype, 0.2, 0.05, bf16_finite or dtype == "fp32"),
                  quantizer(16384, 16, dtype, 2.4, chunked_16k_gib, dense_fails=dense_16k_fails),
                  quantizer(16384, 256, dtype, 2.6, chunked_16k_gib),
                  quantizer(100000, 8, dtype, 15.0, chunked_100k_gib, dense_fails=dense_100k_fails)]
    return DeviceRun(plan, H200_MACHINE, "python -m benchmarks --device cuda", 3.0, "1.32.0",
                     train, arc, quant)


def verdicts(run):
    return {check.what: check.verdict
            for check in check_targets(run.plan.device, run.train, run.arc_loss, run.quantizers)}


def test_gpu_targets_met_and_missed():
    good = verdicts(cuda_run())
    assert set(good.values()) == {"met"} and len(good) == 8
    bad = verdicts(cuda_run(step_ratio=1.03, chunked_16k_gib=0.5, chunked_100k_gib=4.5, bf16_finite=False))
    assert [bad[w] for w in (
        "f8 VQGAN train step time, ArcQuantizer / VectorQuantizer2",
        "ArcQuantizer peak memory, chunked / dense (K=16384, N=32768)",
        "ArcQuantizer chunked at K=100000, N=32768: memory above its inputs",
        "bf16 autocast: ArcQuantizer (dense, chunked) output, loss, gradient")] == ["MISSED"] * 4
    # the dense arm it divides by ran out of memory: the memory ratio could not be taken
    partial = verdicts(cuda_run(dense_16k_fails=True))
    assert partial["ArcQuantizer peak memory, chunked / dense (K=16384, N=32768)"] == "not measured"
    run = cuda_run(dense_100k_fails=True)  # the chunked arm's own targets are still met
    checks = {c.what: c for c in check_targets("cuda", run.train, run.arc_loss, run.quantizers)}
    assert checks["ArcQuantizer chunked at K=100000, N=32768: memory above its inputs"].verdict == "met"
    throughput = checks["Quantiser throughput, ArcQuantizer / vector-quantize-pytorch cosine VectorQuantize"]
    assert throughput.verdict == "not measured" and f"K=100000, D=8, fp32: ArcQuantizer: {OOM}" in throughput.figure


def test_gpu_section_shows_figures_verdicts_and_out_of_memory():
    text = render_section(cuda_run(chunked_100k_gib=4.5, dense_100k_fails=True))
    assert "| ArcQuantizer chunked at K=100000, N=32768: memory above its inputs | < 4 GiB " \
           "| K=100000, D=8, fp32: 4.50 GiB; K=100000, D=8, bf16: 4.50 GiB | MISSED |" in text
    assert "| paper f8 (256 px, ch 128) | ArcQuantizer | 30 x 256 px | 32x32 | 3 | 0.505; 0.500 - 0.510 " \
           "| 1.010 | met |" in text
    assert f"| 100000 | 8 | 32768 | 2048 | fp32 | {OOM} | 12.00; 11.88 - 12.12 |" in text  # time table
    assert f"| 100000 | 8 | 32768 | 2048 | bf16 | {OOM} | 4.50 GiB | - | - | - |" in text  # memory table
    assert "| 16384 | 16 | 32768 | 2048 | fp32 | 2.40 GiB | 205 MiB | - | - | 1/12.0 |" in text
    assert "max_memory_allocated" in text and "CUDA events" in text


def test_cpu_section_has_no_gpu_memory_table_and_the_cpu_targets():
    run = cuda_run()
    run.plan = plan_for("cpu", quick=False)
    text = render_section(run)
    assert "Peak memory of one forward + backward" not in text
    assert "| ArcQuantizer chunked at K=100000" not in text and "| f8 VQGAN train step time" not in text
    assert "| VQGAN train step time, ArcQuantizer / VectorQuantizer2 | <= 1.03 |" in text
    assert "VmHWM" in text


def test_unmeasured_device_says_so_with_every_target():
    text = compose(not_measured_sections())
    sections = text.split("<!-- benchmarks:cuda:start -->")
    assert text.count(NOT_MEASURED_MARK) == 2 and parse_sections(text) == {}
    assert sections[1].count("| not measured |") == 8 and "bash scripts/gpu_benchmarks.sh" in sections[1]
    assert "K=100000, D=8, N=32768 (chunk 2048)" in sections[1]


def test_each_device_section_is_kept_when_the_other_is_written(tmp_path):
    path = tmp_path / "docs" / "BENCHMARKS.md"
    write_section(path, "cuda", "GPU figures\n\nmore")
    write_section(path, "cpu", "CPU figures")
    text = path.read_text()
    assert parse_sections(text) == {"cpu": "CPU figures", "cuda": "GPU figures\n\nmore"}
    assert text.count("runs this section and the MNIST ablation at the paper's budget") == 1
    assert text.startswith("# ArcVQ benchmarks")
    write_section(path, "cuda", "new GPU figures")
    assert parse_sections(path.read_text()) == {"cpu": "CPU figures", "cuda": "new GPU figures"}
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
    assert sorted(p.name for p in path.parent.iterdir()) == ["BENCHMARKS.md"]  # no temporary file left


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_nothing_is_overwritten_that_would_be_lost(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    with pytest.raises(ValueError, match="not a benchmarks report"):
        write_section(notes, "cpu", "x")
    report = tmp_path / "BENCHMARKS.md"  # a CPU run's report, with text added by hand outside the sections
    write_section(report, "cpu", "CPU figures", not_measured_sections())
    start, end = "<!-- benchmarks:cuda:start -->", "<!-- benchmarks:cuda:end -->"
    mine = report.read_text().replace(start, "Added by hand before the GPU section.\n\n" + start)
    mine += "\n## My own measurements\n\n| B | peak |\n|---|---|\n| 16 | 556 MiB |\n"
    report.write_text(mine)
    write_section(report, "cuda", "GPU figures", not_measured_sections())
    text = report.read_text()
    assert parse_sections(text) == {"cpu": "CPU figures", "cuda": "GPU figures"}
    assert text[:text.index(start)] == mine[:mine.index(start)] and text.endswith(mine[mine.index(end):])
    unmarked = tmp_path / "unmarked.md"  # a report whose GPU section was deleted by hand: nowhere to put one
    unmarked.write_text(mine[:mine.index(start)])
    with pytest.raises(ValueError, match="has no cuda section"):
        write_section(unmarked, "cuda", "x")
    assert notes.read_text() == "my notes\n" and unmarked.read_text() == mine[:mine.index(start)]


def test_copy_section_from_a_run_elsewhere(tmp_path, capsys):
    run, docs = tmp_path / "run.md", tmp_path / "docs.md"
    write_section(docs, "cpu", "CPU figures")
    write_section(run, "cpu", "the GPU machine's CPU figures")
    with pytest.raises(ValueError, match="no measured cuda section"):
        copy_section("cuda", run, docs)
    write_section(run, "cuda", "GPU figures")
    document.main(["--device", "cuda", "--from", str(run), "--into", str(docs)])
    assert parse_sections(docs.read_text()) == {"cpu": "CPU figures", "cuda": "GPU figures"}
    with pytest.raises(SystemExit) as exit_info:
        document.main(["--device", "cuda", "--from", str(tmp_path / "missing.md"), "--into", str(docs)])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_the_machine_table_names_cpu_cores_memory_gpu_and_load():
    gpu_text = render_section(cuda_run())
    assert "| GPU | NVIDIA H200 (140 GiB, compute capability 9.0, 132 multiprocessors) |" in gpu_text
    assert "| CUDA (torch build) / cuDNN | 13.0 / 91300 |" in gpu_text
    cpu_rows = machine_rows(machine_description())
    assert cpu_rows["GPU"] == "none used (CPU run)" and cpu_rows["cores"].isdigit()
    assert list(cpu_rows)[:4] == ["CPU", "cores", "memory", "GPU"] and cpu_rows["memory"].endswith(" GiB")
    assert re.fullmatch(r"\d+\.\d, \d+\.\d, \d+\.\d", cpu_rows["load average at start (1, 5, 15 min)"])
