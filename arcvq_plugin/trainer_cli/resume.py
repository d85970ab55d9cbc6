"""``-r/--resume``: find the log dir and checkpoint, load it, and check it fits the model.

Upstream accepts a log dir (``<logdir>/checkpoints/last.ckpt`` is used) or a checkpoint file inside
``<logdir>/checkpoints/``; the log dir's ``configs/*.yaml`` are merged before any ``--base``.

The checkpoint is loaded tensors-only (``torch.load(weights_only=True)``); checkpoints written by
this CLI hold only tensors and plain containers and load that way. A checkpoint that pickles other
objects (for example OmegaConf hyper-parameters of older Lightning releases, or a planted call) is
refused before anything from it runs, unless ``--trust-checkpoint`` is given (see
:mod:`arcvq_plugin.checkpoint_loading`).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Mapping

import torch

__all__ = ["ResumeError", "resolve_resume", "check_state_dict_matches"]


class ResumeError(ValueError):
    """A resume path or checkpoint that cannot be resumed from."""


def resolve_resume(resume: str) -> tuple[str, str, list[str]]:
    """``resume`` (a log dir or a checkpoint in ``<logdir>/checkpoints/``) -> (logdir, checkpoint, config files)."""
    if not isinstance(resume, str) or not resume:
        raise ResumeError("-r/--resume needs a log dir or a checkpoint path")
    if not os.path.exists(resume):
        raise ResumeError(f"cannot find {resume!r} (-r/--resume takes a log dir or a checkpoint path)")
    if os.path.isfile(resume):
        ckpt = resume
        logdir = os.path.dirname(os.path.dirname(os.path.abspath(resume)))
        if os.path.basename(os.path.dirname(os.path.abspath(resume))) != "checkpoints":
            raise ResumeError(f"{resume!r} is not inside a log dir's checkpoints/ folder; "
                              "resume takes <logdir> or <logdir>/checkpoints/<name>.ckpt")
    else:
        logdir = resume.rstrip("/")
        ckpt = os.path.join(logdir, "checkpoints", "last.ckpt")
        if not os.path.isfile(ckpt):
            raise ResumeError(f"log dir {resume!r} has no checkpoints/last.ckpt; pass a checkpoint path instead")
    configs = sorted(glob.glob(os.path.join(logdir, "configs", "*.yaml")))
    if not configs:
        raise ResumeError(f"log dir {logdir!r} has no configs/*.yaml snapshot to resume with")
    return logdir, ckpt, configs


def check_state_dict_matches(model: torch.nn.Module, checkpoint: Mapping[str, Any], path: str,
                             max_listed: int = 8) -> None:
    """Raise ResumeError naming the keys when the checkpoint's ``state_dict`` does not fit ``model``."""
    if "state_dict" not in checkpoint:
        raise ResumeError(f"{path} has no 'state_dict': not a Lightning training checkpoint")
    saved = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "; ".join(items[:max_listed])
        more = f"; ... ({len(items) - max_listed} more)" if len(items) > max_listed else ""
        return f"\n  {title} ({len(items)}): {shown}{more}"

    message = f"checkpoint {path} does not fit the configured model (another architecture?):"
    if mismatched:
        message += listing("shape mismatch", mismatched)
    if missing:
        message += listing("missing in checkpoint", missing)
    if unexpected:
        message += listing("unexpected in checkpoint", unexpected)
    raise ResumeError(message)
