"""arcvq-reproduce end to end on a tiny budget: table, JSON, checkpoints and PNG figures."""
import json

import pytest
import torch
from PIL import Image

from arcvq_plugin.vqvae.reproduce import build_parser, main


def test_reproduce_end_to_end_then_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--rows", "vq", "arcvq", "--seeds", "1", "--epochs", "1", "--batch-size", "64",
            "--limit-train", "256", "--limit-test", "64", "--out", str(out), "--no-progress-bar"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| VQ-VAE | 1 |" in printed and "| ArcVQ-VAE | 1 |" in printed and "28.01" in printed  # paper beside

    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["n_test_images"] == 64 and results["settings"]["rows"] == ["vq", "arcvq"]
    for row in ("vq", "arcvq"):
        seed = results["rows"][row]["seeds"]["1"]
        assert 0.0 < seed["psnr"] < 100.0 and -1.0 <= seed["ssim"] <= 1.0
        assert 0.0 < seed["usage"] <= 1.0 and seed["dead_codes"] == 512 - round(seed["usage"] * 512)
        assert results["rows"][row]["mean"]["psnr"] == seed["psnr"]
        checkpoint = torch.load(out / "checkpoints" / f"{row}_seed1.ckpt", weights_only=False)
        assert checkpoint["state_dict"]["quantize.embedding.weight"].shape == (512, 64)
        assert checkpoint["config"]["lightning"]["trainer"]["max_epochs"] == 1
    assert (out / "table.md").read_text() in printed
    figures = results["figures"]
    assert set(figures) == {"reconstructions"} | {f"{kind}_{row}" for kind in ("usage", "norms", "distances")
                                                  for row in ("vq", "arcvq")}
    for path in figures.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 50

    before = (out / "results.json").read_bytes()
    assert main(argv) == 2  # an earlier run is not overwritten without --force
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--rows", "nope"], ["--batch-size", "-1"]])
def test_reproduce_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
