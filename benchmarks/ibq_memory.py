"""IndexPropagationQuantizer (IBQ): peak memory of one training forward + backward, in dense one-hots.

IBQ's soft one-hot is dense, B x K x H x W. For each ``B K H D`` case a fresh subprocess builds the
quantiser and float32 latents (B, D, H, H), runs a toy-size call that loads every kernel, resets the
peak-RSS mark (``/proc/self/clear_refs`` = 5, Linux) and runs one training forward and backward; the
peak is ``VmHWM - VmRSS before`` (as :mod:`benchmarks.arc_loss_memory`), printed as a row of a markdown
table beside the quantiser's own estimate (``IndexPropagationQuantizer.dense_bytes``)::

    python -m benchmarks.ibq_memory 16,1024,32,64 32,1024,32,64 16,4096,16,64 64,512,16,64
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from arcvq_plugin.markdown import markdown_table

HEADER = ("B", "K", "H x W", "D", "one B x K x H x W tensor", "measured peak", "peak / one tensor",
          "the quantiser's estimate (refused above the free memory)")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: Linux only")


def worker(batch: int, n_e: int, side: int, e_dim: int) -> list[str]:
    """One case in this process; returns its row's cells (:data:`HEADER`)."""
    from arcvq_plugin.baselines import IndexPropagationQuantizer

    torch.set_num_threads(1)
    quantizer = IndexPropagationQuantizer(n_e, e_dim)
    z = torch.randn(batch, e_dim, side, side, requires_grad=True)
    quantizer(torch.randn(1, e_dim, 2, 2))[1].backward()  # load every kernel
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    z_q, loss, _ = quantizer(z)
    (loss + z_q.square().mean()).backward()
    peak = _status("VmHWM") - before
    dense = batch * n_e * side * side * 4
    return [str(batch), str(n_e), f"{side} x {side}", str(e_dim), f"{dense / 2 ** 20:.0f} MiB",
            f"{peak / 2 ** 20:.0f} MiB", f"{peak / dense:.2f}", f"{quantizer.dense_bytes(z) / 2 ** 20:.0f} MiB"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(*(int(v) for v in argv[1].split(",")))))
        return 0
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    rows = [json.loads(subprocess.run([sys.executable, "-m", "benchmarks.ibq_memory", "--worker", case], check=True,
                                      capture_output=True, text=True).stdout)
            for case in argv]
    print("\n".join(markdown_table(HEADER, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
