"""``docs/BENCHMARKS.md``: one section per device between markers, each rewritten only by a run
on that device; everything outside the markers (the introduction, the notes, whatever was added
by hand) is kept as it is.

A new report is composed from one section per device: the measured ones and, for a device not
measured yet, the section its caller gives (:func:`benchmarks.report.not_measured_sections`: how
to measure it, what it will measure, its targets). Of the benchmarks package this module imports
only :mod:`benchmarks.devices`.

``python -m benchmarks.document --device cuda --from RUN/BENCHMARKS.md --into docs/BENCHMARKS.md``
copies one device's section from a report written elsewhere (e.g. on a GPU machine) into this
one, keeping everything else.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Mapping, Optional

from arcvq_plugin.atomic_outputs import write_text_atomic

from .devices import DEVICE_TITLES, DEVICES, NOT_MEASURED_MARK, check_device

__all__ = ["TITLE", "check_writable", "compose", "copy_section", "parse_sections", "read_report", "write_atomic",
           "write_section"]

TITLE = "# ArcVQ benchmarks"
_START, _END = "<!-- benchmarks:{device}:start -->", "<!-- benchmarks:{device}:end -->"

INTRO = """
Each device's section is written by `python -m benchmarks --device cpu|cuda` (do not edit it by
hand; rerun it), and rewritten only by a run on that device; the rest of this page is kept as it
is. Every figure is a ratio of arms measured side by side in the same run, repeats interleaved,
median. What each comparison runs is in the docstrings of `benchmarks/train_step.py`,
`benchmarks/arc_loss_memory.py` and `benchmarks/quantizers.py`; the sizes of each device are in
`benchmarks/plans.py`.
"""

CUDA_PREAMBLE = """
`scripts/gpu_benchmarks.sh` runs this section and the MNIST ablation at the paper's budget
(`python -m arcvq_plugin.vqvae.reproduce --device cuda --budget paper`);
`scripts/gpu_benchmarks.sh --apply <its output folder>` puts the ablation's table and figures,
the machine description (`nvidia-smi`, torch) and the script's status in [`docs/gpu/`](gpu/).
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
    """A new report: the title, the introduction, each device's section from ``sections`` (one per
    device, measured or not), the notes."""
    missing = [device for device in DEVICES if device not in sections]
    if missing:
        raise ValueError(f"a report needs a section for every device; none given for {missing}")
    blocks = [_device_block(device, sections[device]) for device in DEVICES]
    return "\n\n".join([TITLE, INTRO.strip(), *blocks, FOOTER.strip()]) + "\n"


def _replace_blocks(text: str, sections: Mapping[str, str]) -> str:
    """``text`` with the block of each device of ``sections`` that it holds replaced by that section;
    everything else in ``text`` kept as it is."""
    for device, body in sections.items():
        match = _pattern(device).search(text)
        if match:
            text = text[:match.start()] + _device_block(device, body) + text[match.end():]
    return text


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


def check_writable(path: Path, device: str) -> Optional[str]:
    """The text of the report at ``path`` (None if it does not exist yet), after checking that
    ``device``'s section can be written there without losing anything: a ValueError otherwise."""
    check_device(device)
    text = read_report(path)
    if text is not None and not _pattern(device).search(text):
        raise ValueError(f"{path} has no {device} section (no {_START.format(device=device)} ... "
                         f"{_END.format(device=device)} markers): refusing to rewrite what it holds; "
                         "put the markers back where the section goes, or pass another --output")
    return text


def write_section(path: Path, device: str, body: str, not_measured: Optional[Mapping[str, str]] = None) -> str:
    """Put ``body`` as ``device``'s section of the report at ``path``; returns the whole new text.

    ``not_measured``: device -> its section before it is measured
    (:func:`benchmarks.report.not_measured_sections`). An existing report keeps everything outside
    ``device``'s section as it is, except that each other device not measured yet gets its section
    from ``not_measured`` (when given there). A new report gets the other devices' sections from
    ``not_measured``, or just the mark that says they are not measured yet.
    """
    text = check_writable(path, device)
    if text is None:
        new_text = compose({**dict.fromkeys(DEVICES, NOT_MEASURED_MARK), **(not_measured or {}), device: body})
    else:
        measured = parse_sections(text)
        unmeasured = {other: section for other, section in (not_measured or {}).items() if other not in measured}
        new_text = _replace_blocks(text, {**unmeasured, device: body})
    write_atomic(path, new_text)
    return new_text


def copy_section(device: str, source: Path, target: Path) -> str:
    """Copy ``device``'s section of the report ``source`` into the report ``target`` (everything else
    in ``target`` kept)."""
    text = read_report(source)
    if text is None:
        raise ValueError(f"--from {source} does not exist")
    body = parse_sections(text).get(device)
    if body is None:
        raise ValueError(f"{source} has no measured {device} section")
    return write_section(target, device, body)


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m benchmarks.document``: :func:`copy_section` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.document", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=DEVICES, required=True)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="report to take the section from")
    parser.add_argument("--into", type=Path, required=True, help="report to put it in (everything else kept)")
    args = parser.parse_args(argv)
    try:
        copy_section(args.device, args.source, args.into)
    except ValueError as err:
        parser.error(str(err))
    print(f"{args.into}: {args.device} section from {args.source}")


if __name__ == "__main__":
    main()
