"""The device-independent logic of the benchmarks' GPU paths, checked on the CPU: the timer's CPU
fallback, peak memory, out-of-memory as a result (simulated errors) in every benchmark, the
finiteness check, and the run's argument checks and thread handling."""
import re
import time

import pytest
import torch
from taming.modules.vqvae.quantize import VectorQuantizer2

from benchmarks import __main__ as cli
from benchmarks import arc_loss_memory, measure, quantizers, train_step
from benchmarks.document import parse_sections
from benchmarks.measure import (Comparison, Interval, interleaved, is_out_of_memory, machine_description,
                                peak_memory, timed)
from benchmarks.plans import plan_for
from benchmarks.report import DeviceRun, render_section

CPU = torch.device("cpu")


def oom(message="CUDA out of memory. Tried to allocate 12.21 GiB"):
    return torch.cuda.OutOfMemoryError(message)


@pytest.fixture
def no_cuda(monkeypatch):
    """Any CUDA call fails the test: the CPU paths must not touch it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA function was called on the CPU path")
    for name in ("Event", "synchronize", "reset_peak_memory_stats", "max_memory_allocated", "memory_allocated",
                 "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, refuse)


def test_cpu_timer_is_wall_clock_and_touches_no_cuda(no_cuda):
    seconds = timed(lambda: time.sleep(0.02), CPU)
    assert 0.015 < seconds < 0.5
    interval = Interval(CPU)
    with pytest.raises(RuntimeError, match="before start"):
        interval.seconds()
    ran = []
    assert peak_memory(lambda: ran.append(1), CPU) is None and ran == [1]


class FakeCuda:
    """Stands in for torch.cuda's events and allocator statistics, to run the GPU branches here."""

    def __init__(self):
        self.allocated, self.peak, self.calls = 100, 100, []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.time = None

        def record(self):
            self.time = time.perf_counter()

        def synchronize(self):
            assert self.time is not None

        def elapsed_time(self, end):
            return (end.time - self.time) * 1e3  # milliseconds, as CUDA's

    def synchronize(self, device=None):
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def allocate(self, n):  # what a kernel would do
        self.allocated += n
        self.peak = max(self.peak, self.allocated)


def test_gpu_timer_and_peak_memory_logic(monkeypatch):
    fake = FakeCuda()
    for name in ("Event", "synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    cuda = torch.device("cuda")
    seconds = timed(lambda: time.sleep(0.02), cuda)
    assert 0.015 < seconds < 0.5 and fake.calls == ["synchronize"]  # synchronised before the events
    fake.allocate(1000)  # an earlier call's peak: reset, not counted
    fake.allocate(-950)  # 50 still held before the call: not counted either

    def work():
        fake.allocate(300)
        fake.allocate(-200)

    assert peak_memory(work, cuda) == 300 and fake.allocated == 250


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(oom()) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_interleaved_reports_an_arm_out_of_memory_and_goes_on(monkeypatch):
    released, order = [], []
    monkeypatch.setattr(measure, "release_memory", lambda device: released.append(device))

    def arm(name, fail_on=None):
        def call():
            order.append(name)
            if fail_on is not None and order.count(name) == fail_on:
                raise oom()
            return float(len(order))
        return call

    result = interleaved({"A": arm("A"), "B": arm("B", fail_on=3), "C": arm("C")}, repeats=3, warmup=1)
    # warm-up A B C, round 0 A B C, round 1 C B (fails) A, round 2 without B: A C
    assert order == ["A", "B", "C", "A", "B", "C", "C", "B", "A", "A", "C"]
    assert result.failures == {"B": "out of memory (CUDA out of memory. Tried to allocate 12.21 GiB)"}
    assert result.samples["B"] == [] and not result.has("B") and result.has("A")
    assert len(result.samples["A"]) == len(result.samples["C"]) == 3 and released == [CPU]
    def broken():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # only out-of-memory is a result
        interleaved({"A": broken}, repeats=1)


def test_train_step_halves_the_batch_until_it_fits(monkeypatch):
    tried = []

    def at_batch(case, batch_size, device):
        tried.append(batch_size)
        if batch_size > 7:
            raise oom()
        return train_step.TrainStepResult(case, batch_size, "32x32", Comparison(), Comparison())

    monkeypatch.setattr(train_step, "_run_at_batch", at_batch)
    monkeypatch.setattr(train_step, "release_memory", lambda device: None)
    case = plan_for("cuda", quick=False).train[0]
    result = train_step.run_case(case, CPU)
    assert tried == [30, 15, 7] and result.batch_size == 7 and result.batches_out_of_memory == [30, 15]

    def never_fits(case, batch_size, device):
        raise oom()

    monkeypatch.setattr(train_step, "_run_at_batch", never_fits)
    result = train_step.run_case(case, CPU)
    assert result.batches_out_of_memory == [30, 15, 7, 3, 1] and result.failure.startswith("every batch size")


def test_arc_loss_in_process_path_reports_a_dense_arm_out_of_memory(monkeypatch, one_thread):
    from arcvq_plugin import losses

    real = losses.arc_margin_loss

    def dense_runs_out(z, codebook, chunk_size=None):
        if chunk_size is None:
            raise oom()
        return real(z, codebook, chunk_size=chunk_size)

    monkeypatch.setattr(losses, "arc_margin_loss", dense_runs_out)
    case = arc_loss_memory.ArcLossCase(48, 96, 4, 32)
    result = arc_loss_memory._run_case_in_process(case, 2, CPU)  # the GPU path, here without peaks
    assert result.seconds.failures["dense"].startswith("out of memory")
    assert result.peak_bytes.failures == result.seconds.failures
    assert len(result.seconds.samples["chunked"]) == len(result.seconds.samples["one chunk"]) == 2
    assert result.max_abs_grad_diff is None and result.loss["chunked"] > 0


def test_quantizers_report_an_arm_out_of_memory_and_a_non_finite_one(monkeypatch, one_thread):
    def vq2_forward(self, z, *args, **kwargs):
        raise oom()

    monkeypatch.setattr(VectorQuantizer2, "forward", vq2_forward)
    case = quantizers.QuantizerCase(32, 4, 2, 4, 8)
    result = quantizers.run_case(case, "fp32", 2, CPU)
    assert result.seconds.failures == {"VectorQuantizer2": "out of memory (CUDA out of memory. Tried to allocate "
                                                            "12.21 GiB)"}
    assert len(result.seconds.samples["ArcQuantizer chunked"]) == 2 and result.finite["ArcQuantizer"]

    def nan_forward(self, z, *args, **kwargs):
        return z * float("nan"), z.sum() * 0, (None, None, None)

    monkeypatch.setattr(VectorQuantizer2, "forward", nan_forward)
    result = quantizers.run_case(case, "bf16", 1, CPU)
    assert result.finite["VectorQuantizer2"] is False and result.finite["ArcQuantizer chunked"] is True
    plan = plan_for("cpu", quick=True)
    text = render_section(DeviceRun(plan, machine_description(), "cmd", 0.1, None, [], [], [result]))
    assert "| NO: VectorQuantizer2 |" in text
    with pytest.raises(ValueError, match="dtype must be one of"):
        quantizers.run_case(case, "fp16", 1, CPU)


def test_quantizers_without_vector_quantize_pytorch(monkeypatch, one_thread):
    monkeypatch.setattr(quantizers, "vector_quantize_available", lambda: False)
    result = quantizers.run_case(quantizers.QuantizerCase(32, 4, 2, 4, 8), "fp32", 1, CPU)
    assert sorted(result.seconds.samples) == ["ArcQuantizer", "ArcQuantizer chunked", "VectorQuantizer2"]
    text = render_section(DeviceRun(plan_for("cpu", quick=True), machine_description(), "cmd", 0.1, None, [], [], [result]))
    assert "vector-quantize-pytorch is not installed" in text
    assert re.search(r"\| 32 \| 4 \| 32 \| 8 \| fp32 \|( [\d.]+; [\d.]+ - [\d.]+ \|){3} not installed \| - \| - \| yes \|",
                     text)


def test_run_checks_arguments_first_writes_its_section_and_restores_threads(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    seen = {}

    def fake_measure(plan, run_threads, command):
        seen["threads"] = torch.get_num_threads()
        return DeviceRun(plan, machine_description(), command, 0.0, None, [], [], [])

    monkeypatch.setattr(cli, "measure", fake_measure)
    output = tmp_path / "B.md"
    text = cli.run(quick=True, output=output, threads=1, device="cpu")
    assert seen["threads"] == 1 and torch.get_num_threads() == threads
    assert output.read_text() == text
    assert f"| CPU | {machine_description()['cpu_model']} |" in parse_sections(text)["cpu"]
    refusals = [({"threads": 0}, "threads must be None or an integer >= 1"),
                ({"device": "tpu"}, "device must be one of")]
    if not torch.cuda.is_available():
        refusals.append(({"device": "cuda"}, "torch sees no CUDA device"))
    for kwargs, message in refusals:
        with pytest.raises(ValueError, match=message):
            cli.run(**{"quick": True, "output": output, "threads": 1, "device": "cpu", **kwargs})
    (tmp_path / "notes.md").write_text("my notes\n")
    with pytest.raises(ValueError, match="not a benchmarks report"):
        cli.run(quick=True, output=tmp_path / "notes.md", threads=1)
    assert (tmp_path / "notes.md").read_text() == "my notes\n"
