"""resolve_device: auto, explicit names, and clear errors for what torch cannot use."""
from __future__ import annotations

import pytest
import torch

from arcvq_plugin.devices import resolve_device


def test_auto_and_none_follow_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")


def test_explicit_devices_and_errors(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda: torch sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"--gpu must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu", what="--gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"cuda:3: torch sees 1 CUDA device"):
        resolve_device("cuda:3")
