"""``python -m benchmarks [--device cpu|cuda] [--quick] [--output docs/BENCHMARKS.md] [--json FILE]
[--threads N]``: run every benchmark on one device and write that device's section of the report
(the other devices' sections are kept)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from arcvq_plugin.validation import check_optional_int

from . import arc_loss_memory, quantizers, train_step
from .devices import DEVICES
from .document import check_writable, write_atomic, write_section
from .measure import machine_description, resolve_device
from .plans import Plan, plan_for
from .report import DeviceRun, not_measured_sections, render_section

ROOT = Path(__file__).resolve().parent.parent


def _vq_version() -> Optional[str]:
    try:
        return importlib.metadata.version("vector-quantize-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return None


def measure(plan: Plan, threads: int, command: str) -> DeviceRun:
    """Run every case of ``plan`` on its device; returns what was measured."""
    device = resolve_device(plan.device)
    machine = machine_description(device)
    started = time.perf_counter()
    train = [train_step.run_case(case, device) for case in plan.train]
    arc_loss = [arc_loss_memory.run_case(case, plan.arc_loss_repeats, threads, device) for case in plan.arc_loss]
    quantizer = [quantizers.run_case(case, dtype, plan.quantizer_repeats, device)
                 for case in plan.quantizers for dtype in plan.quantizer_dtypes]
    minutes = (time.perf_counter() - started) / 60
    return DeviceRun(plan, machine, command, minutes, _vq_version(), train, arc_loss, quantizer)


def check_arguments(quick: bool, output: Path, threads: Optional[int], device: str) -> Plan:
    """The plan for these arguments; a ValueError naming the bad one before anything runs."""
    check_optional_int("threads", threads, minimum=1)
    plan = plan_for(device, quick)
    resolve_device(device)
    check_writable(output, device)  # a file that is not a report, or a report without this device's section
    return plan


def run(quick: bool, output: Path, threads: Optional[int], device: str = "cpu",
        json_path: Optional[Path] = None) -> str:
    """Run every benchmark on ``device`` and write its section of the report at ``output`` (other
    devices' sections kept); returns the whole report. ``json_path``: also write every sample.

    torch's intra-op thread count is set to ``threads`` for the run (None: left as it is) and
    restored afterwards. Bad arguments are refused first (:func:`check_arguments`).
    """
    plan = check_arguments(quick, output, threads, device)
    command = "python -m benchmarks" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's hints, per fit
            result = measure(plan, threads or previous_threads, command)
    finally:
        torch.set_num_threads(previous_threads)
    text = write_section(output, device, render_section(result), not_measured_sections())
    if json_path is not None:
        write_atomic(json_path, json.dumps(dataclasses.asdict(result), indent=1, default=str) + "\n")
    return text


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default cpu)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds; for smoke tests)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write every sample here (JSON)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 on the CPU, torch's default with --device cuda)")
    args = parser.parse_args(argv)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    try:
        check_arguments(args.quick, args.output, threads, args.device)
    except ValueError as err:
        parser.error(str(err))
    print(run(args.quick, args.output, threads, args.device, args.json))


if __name__ == "__main__":
    main()
