"""``docs/BENCHMARKS.md``: one section per device between markers, each rewritten only by a run
on that device; a device never measured gets a section that says so and how to measure it.

``python -m benchmarks.document --device cuda --from RUN/BENCHMARKS.md --into docs/BENCHMARKS.md``
copies one device's section from a report written elsewhere (e.g. on a GPU machine) into this
one, keeping the other devices' sections.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Mapping, Optional

from arcvq_plugin.atomic_outputs import write_text_atomic

__all__ = ["DEVICES", "DEVICE_TITLES", "MEASURE_COMMANDS", "NOT_MEASURED_MARK", "TITLE", "check_writable", "compose",
           "copy_section", "parse_sections", "read_report", "write_atomic", "write_section"]

TITLE = "# ArcVQ benchmarks"
DEVICES = ("cpu", "cuda")
DEVICE_TITLES = {"cpu": "CPU", "cuda": "CUDA GPU"}
NOT_MEASURED_MARK = "**Not measured yet.**"
MEASURE_COMMANDS = {
    "cpu": "`python -m benchmarks --device cpu`",
    "cuda": "`bash scripts/gpu_benchmarks.sh` (this section and the paper-budget reproduction, within 10 "
            "minutes; its header says how to run it on a lent GPU machine), or `python -m benchmarks "
            "--device cuda` (this section only)",
}
_START, _END = "<!-- benchmarks:{device}:start -->", "<!-- benchmarks:{device}:end -->"

INTRO = """
Written by `python -m benchmarks --device cpu|cuda` (do not edit by hand; rerun it): one section
per device, each rewritten only by a run on that device. Every figure is a ratio of arms
measured side by side in the same run, repeats interleaved, median. What each comparison runs is
in the docstrings of `benchmarks/train_step.py`, `benchmarks/arc_loss_memory.py` and
`benchmarks/quantizers.py`; the sizes of each device are in `benchmarks/plans.py`.
"""

CUDA_PREAMBLE = """
Section 2 of issue 13, the MNIST ablation at the paper's budget
(`python -m arcvq_plugin.vqvae.reproduce --device cuda --budget paper`), is run by the same
script, `scripts/gpu_benchmarks.sh`; `scripts/gpu_benchmarks.sh --apply <its output folder>`
puts its table and figures, the machine description (`nvidia-smi`, torch) and the script's
status in [`docs/gpu/`](gpu/).
"""

FOOTER = """
## What makes ArcVQ cheap here

One pass over each (K, chunk) block of cosines (`arcvq_plugin.losses.scan_cosines`) yields the
selected code of every latent, every code's top-k positives (a running top-k merged chunk by
chunk) and the log-sum-exp of each code's negatives (latents that leave the running top-k are
added to it, so nothing is ever subtracted). Dense (`chunk_size=None`, ArcQuantizer's default)
keeps that block's softmax weights, so the backward is one matrix product; chunked recomputes
each block once in backward (`_NegativeLogSumExp`) and keeps nothing of size K x N. All blocks of
one pass share one workspace; the argmax over codes and the top-k over latents each start from
block maxima over 16 entries (fast vectorised `amax`) and finish inside the winning blocks; no
one-hot matrix, no host synchronisation (except `check_finite`'s single `isfinite().all()`).

## Notes on the results

- Chunked versus dense time: the chunked path does one more K x N x D matrix product than the
  dense one (recomputing each block in backward instead of keeping it), so where the matrix
  products dominate (large D, e.g. 256) its time ratio rises towards 1.5; where they do not
  (D = 16, the paper's ImageNet codebooks) chunking costs little. The "one chunk" column isolates
  that recomputation: chunking itself is no slower than recomputing one dense block.
- ArcQuantizer's default is the dense path (`arc_chunk_size=None`), the fastest; set
  `arc_chunk_size` only when K x N floats do not fit (it then holds K x chunk instead).
"""


def _pattern(device: str) -> re.Pattern:
    return re.compile(re.escape(_START.format(device=device)) + r"\n(.*?)\n" + re.escape(_END.format(device=device)),
                      re.DOTALL)


def _preamble(device: str) -> str:
    return CUDA_PREAMBLE.strip() + "\n\n" if device == "cuda" else ""


def parse_sections(text: str) -> dict[str, str]:
    """device -> the measured section found between its markers in ``text`` (without the heading
    and preamble this module adds; a "not measured" section counts as none)."""
    sections = {}
    for device in DEVICES:
        match = _pattern(device).search(text)
        if not match:
            continue
        body = match.group(1)
        for prefix in (f"## {DEVICE_TITLES[device]}\n\n", _preamble(device)):
            body = body[len(prefix):] if body.startswith(prefix) else body
        if not body.startswith(NOT_MEASURED_MARK):
            sections[device] = body
    return sections


def _device_block(device: str, body: str) -> str:
    return "\n".join([_START.format(device=device), f"## {DEVICE_TITLES[device]}", "", _preamble(device) + body,
                      _END.format(device=device)])


def compose(sections: Mapping[str, str]) -> str:
    """The whole document from the device sections at hand; a missing device says it is not measured."""
    parts = [TITLE, INTRO.strip()]
    for device in DEVICES:
        body = sections.get(device)
        if not body:  # imported here: copying sections needs neither torch nor the benchmarks
            from .plans import plan_for
            from .report import not_measured_section

            body = not_measured_section(plan_for(device, quick=False), MEASURE_COMMANDS[device])
        parts.append(_device_block(device, body))
    parts.append(FOOTER.strip())
    return "\n\n".join(parts) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Create ``path``'s folder, then :func:`arcvq_plugin.atomic_outputs.write_text_atomic`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def read_report(path: Path) -> Optional[str]:
    """The report at ``path`` (None if there is none); refuses a file that is not one."""
    if not path.exists():
        return None
    text = path.read_text()
    if not text.startswith(TITLE):
        raise ValueError(f"{path} exists and is not a benchmarks report (it does not start with {TITLE!r}); "
                         "refusing to overwrite it: pass another --output")
    return text


def check_writable(path: Path, device: str) -> dict[str, str]:
    """The sections of the report at ``path`` (none if it does not exist yet), after checking that
    ``device``'s section may be written there without losing anything: a ValueError otherwise."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    text = read_report(path)
    if text is None:
        return {}
    legacy = not any(_START.format(device=d) in text for d in DEVICES)
    if legacy and device != "cpu":
        raise ValueError(f"{path} has no device sections (written before they existed, from a CPU run): "
                         f"writing the {device} section would drop its CPU figures. Rerun "
                         "`python -m benchmarks --device cpu` on it first, or pass another --output")
    return parse_sections(text)


def write_section(path: Path, device: str, body: str) -> str:
    """Put ``body`` as ``device``'s section of the report at ``path`` (created if missing), keeping
    the other devices' sections; returns the whole new text."""
    sections = check_writable(path, device)
    sections[device] = body
    new_text = compose(sections)
    write_atomic(path, new_text)
    return new_text


def copy_section(device: str, source: Path, target: Path) -> str:
    """Copy ``device``'s section of the report ``source`` into the report ``target``."""
    text = read_report(source)
    if text is None:
        raise ValueError(f"--from {source} does not exist")
    body = parse_sections(text).get(device)
    if body is None:
        raise ValueError(f"{source} has no measured {device} section")
    return write_section(target, device, body)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.document", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=DEVICES, required=True)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="report to take the section from")
    parser.add_argument("--into", type=Path, required=True, help="report to put it in (other sections kept)")
    args = parser.parse_args(argv)
    try:
        copy_section(args.device, args.source, args.into)
    except ValueError as err:
        parser.error(str(err))
    print(f"{args.into}: {args.device} section from {args.source}")


if __name__ == "__main__":
    main()
