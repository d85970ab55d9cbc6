"""``kill -9`` at random moments of a real training process that checkpoints every step: after
each kill every checkpoint file loads (tensors only), no partial file is left under a checkpoint
name, and ``arcvq-train -r <logdir>`` resumes from ``last.ckpt``; the last resume finishes with
exit status 0."""
from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCVQ = str(ROOT / "configs" / "taming" / "tiny_arcvq.yaml")
EVERY_STEP = ["data.params.train.params.length=8", "data.params.validation.params.length=4",
              "lightning.modelcheckpoint.params.every_n_train_steps=1",
              "lightning.callbacks.image_logger.params.batch_frequency=100000", "--no-test"]
KILLS = 3


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "arcvq_plugin.main", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def start_and_kill(args: list[str], pattern: str, rng: random.Random, log: Path) -> Path:
    """Start ``arcvq-train args``; once the ``last.ckpt`` matching ``pattern`` is (re)written,
    SIGKILL the process after a random delay (while it keeps checkpointing every step)."""
    def newest() -> int:
        return max((os.stat(p).st_mtime_ns for p in glob.glob(pattern)), default=-1)

    before = newest()
    with open(log, "ab") as output:
        process = subprocess.Popen(command(*args), env=environment(), stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while newest() == before:
        assert process.poll() is None, f"training ended (status {process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.5))
    process.send_signal(signal.SIGKILL)
    process.wait()
    (last,) = glob.glob(pattern)
    return Path(last)


def test_kill_9_during_checkpoint_writes_never_loses_last_ckpt(tmp_path):
    rng = random.Random(19)
    logdir = tmp_path / "logs"
    log = tmp_path / "train.log"
    pattern = str(logdir / "*_kill" / "checkpoints" / "last.ckpt")
    args = ["--base", TINY_ARCVQ, "-t", "--logdir", str(logdir), "-n", "kill", "--max_epochs", "1000", *EVERY_STEP]
    steps = []
    for _ in range(KILLS):
        last = start_and_kill(args, pattern, rng, log)
        names = sorted(p.name for p in last.parent.iterdir())
        assert all(name.endswith(".ckpt") or ".partial-" in name for name in names), names
        for checkpoint in last.parent.glob("*.ckpt"):
            torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = torch.load(last, map_location="cpu", weights_only=True)
        steps.append(state["global_step"])
        args = ["-r", str(last.parent.parent), "-t", "--max_epochs", "1000", *EVERY_STEP]
    assert steps == sorted(steps) and steps[-1] > steps[0], steps
    args[4] = str(state["epoch"] + 2)  # --max_epochs: finish one more epoch
    done = subprocess.run(command(*args), env=environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] > steps[-1] and final["epoch"] == state["epoch"] + 1
    assert not list(last.parent.glob(".*.partial-*"))
