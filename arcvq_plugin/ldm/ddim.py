"""ldm's DDIM sampler, on the model's device.

``ldm.models.diffusion.ddim.DDIMSampler.register_buffer`` moves every schedule tensor to
``cuda``, which fails on a machine without a GPU (and puts the schedule on the wrong GPU under
multi-GPU runs). This subclass keeps the sampling code and puts the tensors on ``model.device``.
"""
from __future__ import annotations

from typing import Any

import torch

from .compat import import_ldm

import_ldm()
from ldm.models.diffusion.ddim import DDIMSampler as _LdmDDIMSampler  # noqa: E402

__all__ = ["DDIMSampler"]


class DDIMSampler(_LdmDDIMSampler):
    """``ldm``'s DDIMSampler (same ``sample(S, batch_size, shape, conditioning, eta=...,
    unconditional_guidance_scale=..., unconditional_conditioning=...)``) on ``model.device``."""

    def register_buffer(self, name: str, attr: Any) -> None:
        if isinstance(attr, torch.Tensor):
            attr = attr.to(self.model.device)
        setattr(self, name, attr)
