"""``python -m benchmarks [--quick] [--output docs/BENCHMARKS.md] [--threads 1]``: run every
benchmark and write the report."""
from __future__ import annotations

import argparse
import importlib.metadata
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from . import arc_loss_memory, quantizer_throughput, train_step
from .measure import machine_description
from .report import render

ROOT = Path(__file__).resolve().parent.parent

TINY_TRAIN_OVERRIDES = train_step.F16_OVERRIDES + (
    "model.params.n_embed=64", "model.params.ddconfig.resolution=32", "model.params.ddconfig.ch=32",
    "model.params.ddconfig.ch_mult=[1,2]", "model.params.ddconfig.attn_resolutions=[]",
    "model.params.ddconfig.num_res_blocks=1", "model.params.lossconfig.params.disc_num_layers=1",
    "model.params.lossconfig.params.disc_ndf=8",
)

FULL = {
    "train": [train_step.TrainStepCase("small (64 px, ch 64, f8)", train_step.SMALL_OVERRIDES, 64, 8, steps=10),
              train_step.TrainStepCase("paper f16 (256 px, ch 128)", train_step.F16_OVERRIDES, 256, 1, steps=5)],
    "memory": [arc_loss_memory.ArcLossCase(16384, 32768, 16, 1024),
               arc_loss_memory.ArcLossCase(16384, 32768, 256, 1024)],
    "throughput": [quantizer_throughput.QuantizerCase(1024, 16, 30, 16),
                   quantizer_throughput.QuantizerCase(1024, 16, 30, 16, 1024),
                   quantizer_throughput.QuantizerCase(16384, 16, 8, 32),
                   quantizer_throughput.QuantizerCase(16384, 16, 8, 32, 1024),
                   quantizer_throughput.QuantizerCase(16384, 256, 8, 32),
                   quantizer_throughput.QuantizerCase(16384, 256, 8, 32, 1024)],
    "memory_repeats": 3, "throughput_repeats": 3,
}
QUICK = {
    "train": [train_step.TrainStepCase("tiny (32 px, ch 32)", TINY_TRAIN_OVERRIDES, 32, 2, steps=1)],
    "memory": [arc_loss_memory.ArcLossCase(64, 256, 8, 32)],
    "throughput": [quantizer_throughput.QuantizerCase(64, 8, 2, 4), quantizer_throughput.QuantizerCase(64, 8, 2, 4, 16)],
    "memory_repeats": 1, "throughput_repeats": 1,
}

METHOD = """
## How these were measured

- **No GPU** in this session: every figure is from the CPU above. No benchmark needs a GPU.
- **A shared CPU.** This machine's 2 cores are shared with other processes (see the load average
  above), so figures drift by several percent between runs; that is why each ratio compares arms
  run alternately within one run, and why ranges are shown. With torch's default 2 intra-op threads
  on an oversubscribed machine every parallel kernel waits for a descheduled thread (small ops
  became ~10x slower), so the run uses `torch.set_num_threads(1)` (`--threads`) for all arms alike.
- **1. Train step.** `arcvq_plugin.taming.VQModel` built from `configs/taming/imagenet_arcvq_f16.yaml`
  and `configs/taming/imagenet_vqgan_f16.yaml` (which differ only in `quantizer_config`) with the
  same overrides; both arms share every weight but the quantiser's. LPIPS weights are not installed
  offline, so both arms use `perceptual_weight: 0` (no LPIPS is built; L1 + codebook + GAN loss).
  A step is what the model's manual-optimisation `training_step` does (forward, the model's own
  autoencoder loss, backward, Adam step with the norm-bound hook `NormBoundCallback` registers,
  discriminator loss, backward, Adam step), called directly on one fixed batch so that single
  steps of the two arms alternate (A B, B A, ...) after one warm-up step each; Lightning's logging
  is left out of both. Whole steps on this machine still vary by several percent from one to the
  next, more than the quantiser costs, so the second table times the quantisers alone at the same
  latent shape with many repeats and reports what they add to a step: that is the precise figure;
  the end-to-end ratio is the check that nothing else differs.
- **2. ArcLoss.** `arcvq_plugin.losses.arc_margin_loss(z, codebook, chunk_size=...)` forward +
  backward on random z (N, D) and codebook (K, D). Dense = `chunk_size=None`: one K x N block,
  kept from forward to backward, so the backward is one matrix product. Chunked = the chunk size
  shown: O(K x chunk) memory, and each block is recomputed once in backward, one more K x N x D
  matrix product. One chunk = `chunk_size=N`: dense memory with the chunked arithmetic, which
  separates the cost of recomputation from the cost of chunking. Each measurement is a fresh subprocess; the peak is the rise of
  the process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs` just before
  the call) over its resident set before it: all memory the call touched, whoever allocated it
  (CPU torch has no allocator statistics to ask). Gradients of the two arms are compared
  element-wise (max abs difference, float32).
- **3. Throughput.** `vector_quantize_pytorch.VectorQuantize(dim=D, codebook_size=K,
  use_cosine_sim=True)` with its defaults (EMA codebook update, rotation trick) against
  `ArcQuantizer(K, D)` with its defaults (BBNR, ArcLoss with top-k 3) in training mode, on the same
  latents (channel-last for VectorQuantize, as it expects), forward + backward of
  `quantised.square().mean() + loss`. Ratio = ArcQuantizer latents/s over VectorQuantize latents/s.
  vector-quantize-pytorch is a benchmark-only dependency (`pip install vector-quantize-pytorch`).

## What makes ArcVQ cheap here

One pass over each (K, chunk) block of cosines (`arcvq_plugin.losses.scan_cosines`) yields the
selected code of every latent, every code's top-k positives (a running top-k merged chunk by
chunk) and the log-sum-exp of each code's negatives (latents that leave the running top-k are
added to it, so nothing is ever subtracted). Dense (`chunk_size=None`, ArcQuantizer's default)
keeps that block's softmax weights, so the backward is one matrix product; chunked recomputes
each block once in backward (`_NegativeLogSumExp`) and keeps nothing of size K x N. All blocks of
one pass share one workspace (fresh large allocations are costly on the CPU, where each page is
mapped and zeroed on first touch); the argmax over codes and the top-k over latents each start
from block maxima over 16 entries (fast vectorised `amax`) and finish inside the winning blocks;
no one-hot matrix, no host synchronisation (except `check_finite`'s single `isfinite().all()`).

## Notes on the results

- Chunked versus dense time: the chunked path does one more K x N x D matrix product than the
  dense one (recomputing each block in backward instead of keeping it), so where the matrix
  products dominate (large D, e.g. 256) its time ratio rises towards 1.5; where they do not
  (D = 16, the paper's ImageNet codebooks) chunking costs little. The "one chunk" column isolates
  that recomputation: chunking itself is no slower than recomputing one dense block.
- ArcQuantizer's default is the dense path (`arc_chunk_size=None`), the fastest; set
  `arc_chunk_size` only when K x N floats do not fit (it then holds K x chunk instead).
- Figures depend on the process's allocator state: VectorQuantize allocates several K x N
  tensors per call, which are much cheaper once the heap is warm (as in a training process, and
  as here, where the train-step benchmark runs first) than in a fresh process.
"""


def run(quick: bool, output: Path, threads: int) -> str:
    """Run every benchmark and write the report to ``output``; returns the report text.

    torch's intra-op thread count is set to ``threads`` for the run and restored afterwards.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's hints, per fit
            text = _run_all(QUICK if quick else FULL, threads, quick)
    finally:
        torch.set_num_threads(previous_threads)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return text


def _run_all(cases: dict, threads: int, quick: bool) -> str:
    machine = machine_description()
    started = time.perf_counter()
    train = [train_step.run_case(case) for case in cases["train"]]
    memory = [arc_loss_memory.run_case(case, cases["memory_repeats"], threads) for case in cases["memory"]]
    try:
        vq_version: Optional[str] = importlib.metadata.version("vector-quantize-pytorch")
    except importlib.metadata.PackageNotFoundError:
        vq_version = None
    throughput = [quantizer_throughput.run_case(case, cases["throughput_repeats"])
                  for case in (cases["throughput"] if vq_version else [])]
    minutes = (time.perf_counter() - started) / 60
    command = "python -m benchmarks" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    return render(machine, command, minutes, train, memory, throughput, METHOD, vq_version, quick)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds; for smoke tests)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    print(run(args.quick, args.output, args.threads))


if __name__ == "__main__":
    main()
