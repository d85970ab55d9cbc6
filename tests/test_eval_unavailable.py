"""Without cached weights and without a network, LPIPS and rFID are reported unavailable with the
install instruction, PSNR/SSIM are still computed, and nothing tries to download."""
import json
import socket

import pytest
import torch

from arcvq_plugin.evaluation import reconstruction_metrics, save_image_folder
from arcvq_plugin.evaluation.cli import main as eval_main


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty TORCH_HOME; every socket connection (and torch.hub download) fails at once and is recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    yield torch_home, attempts
    assert attempts == [], "a metric tried to reach the network"
    assert [p for p in torch_home.rglob("*") if p.is_file()] == [], "files were written into TORCH_HOME"


def _images(n=3, channels=1, size=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    real = torch.rand(n, channels, size, size, generator=generator)
    return real, (real + 0.05 * torch.randn(real.shape, generator=generator)).clamp(0, 1)


def test_missing_weights_are_unavailable_with_instruction(offline):
    real, fake = _images()
    result = reconstruction_metrics(real, fake, device="cpu")
    assert result["lpips"] is None and result["rfid"] is None
    for name in ("lpips", "rfid"):
        reason = result["unavailable"][name]
        assert "arcvq-install-metric-weights" in reason and str(offline[0]) in reason
    assert result["psnr"] > 20 and 0 < result["ssim"] < 1
    assert result["substitute_weights"] is False and result["weights"] == {}


def test_cli_folders_offline_writes_json(offline, tmp_path, capsys):
    real, fake = _images(channels=3)
    save_image_folder(real, tmp_path / "real")
    save_image_folder(fake, tmp_path / "fake")
    out = tmp_path / "result.json"
    assert eval_main(["folders", str(tmp_path / "real"), str(tmp_path / "fake"), "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 3 and result["lpips"] is None and result["rfid"] is None
    assert "arcvq-install-metric-weights" in result["unavailable"]["rfid"]
    printed = capsys.readouterr().out
    assert "| fake |" in printed and "rfid unavailable" in printed
