"""arcvq-convert on synthetic checkpoints with the exact upstream key layouts at tiny widths.

Key layouts come from the real upstream classes (taming.models.vqgan.VQModel / GumbelVQ,
ldm.models.autoencoder.VQModel / AutoencoderKL) built with tiny ddconfigs (base width 32 instead
of 128, resolution 32 instead of 256, attention at the same levels) and the public codebook shapes;
the loss is not built (LPIPS needs weights that are not installed): ``loss.discriminator.*`` come
from taming's real NLayerDiscriminator, ``loss.perceptual_loss.*`` are synthetic.

Exact round trips: with every codebook norm equal, L2 and cosine selection pick the same code
(||z - e||^2 = ||z||^2 - 2 z.e + c^2), so ``codebook=keep`` reconstructs bit for bit like the
original. Otherwise tokens whose L2 and cosine choices differ change, and the count is checked
against an independent computation.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from arcvq_plugin.atomic_outputs import OutputError
from arcvq_plugin.compat import install_lightning_shims
from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.convert import ConversionError, convert_checkpoint, detect_layout
from arcvq_plugin.convert import converter as converter_module
from arcvq_plugin.convert.cli import main as cli_main
from arcvq_plugin.convert.codebook import clock_start, codebook_statistics
from arcvq_plugin.convert.image_check import reconstruct
from arcvq_plugin.convert.model_config import build_vq_model, vq_model_node
from arcvq_plugin.schedules import radius

install_lightning_shims()

IDENTITY = {"target": "torch.nn.Identity"}


def _ddconfig(z: int, ch_mult: list[int], attn_levels: list[int], attn_type: str | None = None) -> dict:
    config = {"double_z": False, "z_channels": z, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
              "ch_mult": ch_mult, "num_res_blocks": 2, "attn_resolutions": [32 // 2**i for i in attn_levels],
              "dropout": 0.0}
    if attn_type is not None:
        config["attn_type"] = attn_type
    return config


# name: (family, ddconfig, n_embed, embed_dim, discriminator layers)
LAYOUTS = {
    "vqgan_imagenet_f16_1024": ("taming", _ddconfig(256, [1, 1, 2, 2, 4], [4]), 1024, 256, 3),
    "vqgan_imagenet_f16_16384": ("taming", _ddconfig(256, [1, 1, 2, 2, 4], [4]), 16384, 256, 3),
    "vq-f4": ("ldm", _ddconfig(3, [1, 2, 4], []), 8192, 3, 3),
    "vq-f4-noattn": ("ldm", _ddconfig(3, [1, 2, 4], [], "none"), 8192, 3, 3),
    "vq-f8": ("ldm", _ddconfig(4, [1, 2, 2, 4], [3]), 16384, 4, 2),
    "vq-f8-n256": ("ldm", _ddconfig(4, [1, 2, 2, 4], [3]), 256, 4, 3),
    "vq-f16": ("ldm", _ddconfig(8, [1, 1, 2, 2, 4], [4]), 16384, 8, 2),
}
TARGETS = {"taming": "arcvq_plugin.taming.VQModel", "ldm": "arcvq_plugin.ldm.VQModel"}


def upstream_state_dict(name: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of the upstream model class of layout ``name`` (tiny width), loss keys added."""
    from taming.models.vqgan import VQModel as TamingVQModel
    from taming.modules.discriminator.model import NLayerDiscriminator
    from ldm.models.autoencoder import VQModel as LdmVQModel

    family, ddconfig, n_embed, embed_dim, disc_layers = LAYOUTS[name]
    torch.manual_seed(seed)
    cls = TamingVQModel if family == "taming" else LdmVQModel
    state_dict = dict(cls(ddconfig, IDENTITY, n_embed, embed_dim).state_dict())
    for key, value in NLayerDiscriminator(3, 64, disc_layers).state_dict().items():
        state_dict["loss.discriminator." + key] = value
    for i, width in enumerate([4, 8]):
        state_dict[f"loss.perceptual_loss.lin{i}.model.1.weight"] = torch.randn(1, width, 1, 1)
    return state_dict


@pytest.fixture(scope="module")
def sources() -> dict[str, dict[str, torch.Tensor]]:
    return {name: upstream_state_dict(name) for name in LAYOUTS}


def save(path, state_dict, **top_level) -> str:
    torch.save({"state_dict": state_dict, "global_step": 7, **top_level}, path)
    return str(path)


def with_codebook(state_dict: dict, codebook: torch.Tensor, prefix: str = "") -> dict:
    out = dict(state_dict)
    out[prefix + "quantize.embedding.weight"] = codebook
    return out


def random_codebook(n: int, d: int, *, seed: int = 1, norms: str = "spread") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=1)
    if norms == "equal":
        return rows * 3.0
    return rows * (0.5 + 4.0 * torch.rand(n, 1, generator=generator))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    photo = data.astronaut()
    for i, (top, left) in enumerate([(0, 0), (100, 200), (300, 150)]):
        Image.fromarray(photo[top:top + 96, left:left + 96]).save(folder / f"img{i}.png")
    return folder


def load_out(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- layouts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_detects_every_public_layout(sources, name):
    family, ddconfig, n_embed, embed_dim, disc_layers = LAYOUTS[name]
    layout = detect_layout(sources[name], resolution=32)
    assert (layout.name, layout.family, layout.n_embed, layout.embed_dim) == (name, family, n_embed, embed_dim)
    assert layout.ddconfig == ddconfig
    assert layout.lossconfig["params"].get("disc_num_layers", 3) == disc_layers
    assert any("base width ch=32" in note for note in layout.notes)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_converts_every_layout(tmp_path, sources, name):
    family, _, n_embed, embed_dim, _ = LAYOUTS[name]
    source = sources[name]
    src = save(tmp_path / "in.ckpt", source)
    out = tmp_path / "out.ckpt"
    small = n_embed <= 1024  # the K x K near-duplicate scan takes seconds at K = 8192, 16384
    report = convert_checkpoint(src, out, resolution=32, near_duplicate_cosine=0.99 if small else None, log=lambda _: None)
    written = load_out(out)["state_dict"]
    assert set(written) == set(source) | {"quantize.clock"}
    for key, tensor in source.items():  # codebook kept too (keep mode, all norms tiny: t0 = 0)
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key
    assert int(written["quantize.clock"]) == report.conversion.clock_start == 0
    config = OmegaConf.load(tmp_path / "out.yaml")
    assert config.model.target == TARGETS[family]
    assert config.model.params.quantizer_config.target == "arcvq_plugin.ArcQuantizer"
    assert config.model.params.ckpt_path == str(out.resolve())
    assert json.loads((tmp_path / "out.convert.json").read_text())["verified"]["decodes_finite"] is True


def test_full_ldm_checkpoint_in_place_and_first_stage_only(tmp_path, sources):
    prefix = "first_stage_model."
    first_stage = with_codebook(sources["vq-f4"], random_codebook(8192, 3))
    full = {prefix + k: v for k, v in first_stage.items() if not k.startswith("loss.")}
    full.update({"betas": torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64), "model_ema.decay": torch.tensor(0.9999),
                 "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 3, 3, 3),
                 "cond_stage_model.embedding.weight": torch.randn(10, 8)})
    src = save(tmp_path / "ldm.ckpt", full)

    report = convert_checkpoint(src, tmp_path / "arc.ckpt", resolution=32, near_duplicate_cosine=None, log=lambda _: None)
    written = load_out(tmp_path / "arc.ckpt")["state_dict"]
    assert set(written) == set(full) | {prefix + "quantize.clock"}
    assert all(torch.equal(written[k], v) for k, v in full.items())  # keep: codebook bit for bit too
    assert int(written[prefix + "quantize.clock"]) == report.conversion.clock_start > 0
    override = OmegaConf.load(tmp_path / "arc.yaml")
    assert override.model.params.first_stage_config.target == "arcvq_plugin.ldm.VQModelInterface"
    assert override.model.params.first_stage_config.params.lossconfig.target == "torch.nn.Identity"
    assert "target" not in override.model  # an override merged after the user's LDM config

    convert_checkpoint(src, tmp_path / "fs.ckpt", resolution=32, first_stage_only=True, near_duplicate_cosine=None,
                       log=lambda _: None)
    standalone = load_out(tmp_path / "fs.ckpt")["state_dict"]
    assert set(standalone) == {k[len(prefix):] for k in full if k.startswith(prefix)} | {"quantize.clock"}
    assert OmegaConf.load(tmp_path / "fs.yaml").model.target == "arcvq_plugin.ldm.VQModel"


# ---- refusals and clear errors ---------------------------------------------------------------
def test_gumbel_checkpoint_is_refused(tmp_path):
    from taming.models.vqgan import GumbelVQ

    model = GumbelVQ(_ddconfig(32, [1, 2, 2, 4], [3]), IDENTITY, 64, 32, temperature_scheduler_config=IDENTITY)
    src = save(tmp_path / "gumbel.ckpt", model.state_dict())
    with pytest.raises(ConversionError, match="logits.*not by nearest neighbour"):
        convert_checkpoint(src, tmp_path / "out.ckpt", log=lambda _: None)
    assert not (tmp_path / "out.ckpt").exists()


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path, sources):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    truncated = tmp_path / "truncated.ckpt"
    save(tmp_path / "whole.ckpt", sources["vq-f8-n256"])
    truncated.write_bytes((tmp_path / "whole.ckpt").read_bytes()[:50_000])
    for path in (garbage, truncated):
        with pytest.raises(ConversionError, match="not a readable torch checkpoint"):
            convert_checkpoint(path, tmp_path / "out.ckpt", log=lambda _: None)
    with pytest.raises(ConversionError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out.ckpt", log=lambda _: None)


def test_wrong_architectures_give_clear_errors(tmp_path, sources):
    from ldm.models.autoencoder import AutoencoderKL

    kl_config = dict(_ddconfig(4, [1, 2], []), double_z=True)
    cases = {
        "not a VQGAN / LDM first-stage checkpoint": {"fc.weight": torch.randn(10, 4), "fc.bias": torch.zeros(10)},
        "KL autoencoder": AutoencoderKL(kl_config, IDENTITY, embed_dim=4).state_dict(),
        "do not fit together": with_codebook(sources["vq-f8-n256"], torch.randn(256, 5)),
        "missing": {k: v for k, v in sources["vq-f8-n256"].items() if not k.startswith("post_quant_conv")},
    }
    for message, state_dict in cases.items():
        src = save(tmp_path / "in.ckpt", state_dict)
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint(src, tmp_path / "out.ckpt", log=lambda _: None)


class OldCallbackState:
    """Stands in for the callback classes old Lightning releases pickled into checkpoints."""


def test_old_lightning_pickles_need_trust(tmp_path, sources):
    src = save(tmp_path / "old.ckpt", sources["vq-f8-n256"], callbacks={OldCallbackState: {"best": 1.0}})
    with pytest.raises(ConversionError, match="--trust-checkpoint"):
        convert_checkpoint(src, tmp_path / "out.ckpt", log=lambda _: None)
    messages = []
    report = convert_checkpoint(src, tmp_path / "out.ckpt", trust_checkpoint=True, log=messages.append)
    assert report.input_loaded_with_weights_only is False
    assert any("weights_only=False" in m and "OldCallbackState" in m for m in messages)
    assert "callbacks" not in load_out(tmp_path / "out.ckpt")  # output loads with weights_only=True


def test_never_overwrites_without_force_and_writes_atomically(tmp_path, sources, monkeypatch):
    src = save(tmp_path / "in.ckpt", sources["vq-f8-n256"])
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"user's file")
    with pytest.raises(OutputError, match="--force"):
        convert_checkpoint(src, out, log=lambda _: None)
    assert out.read_bytes() == b"user's file" and not (tmp_path / "out.yaml").exists()
    with pytest.raises(ConversionError, match="input checkpoint"):
        convert_checkpoint(src, src, force=True, log=lambda _: None)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(converter_module, "_verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(src, out, force=True, log=lambda _: None)
    assert out.read_bytes() == b"user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ckpt", "out.ckpt"]  # no partial files left
    monkeypatch.undo()
    convert_checkpoint(src, out, force=True, log=lambda _: None)
    assert "quantize.clock" in load_out(out)["state_dict"]


def test_drop_loss(tmp_path, sources):
    src = save(tmp_path / "in.ckpt", sources["vq-f8-n256"])
    report = convert_checkpoint(src, tmp_path / "out.ckpt", drop_loss=True, log=lambda _: None)
    written = load_out(tmp_path / "out.ckpt")["state_dict"]
    assert not any(k.startswith("loss.") for k in written)
    assert report.tensors.dropped == sum(k.startswith("loss.") for k in sources["vq-f8-n256"])


# ---- codebook geometry -----------------------------------------------------------------------
def test_clock_start_is_the_first_step_covering_the_largest_norm(tmp_path, sources):
    codebook = random_codebook(256, 4)
    max_norm = float(codebook.norm(dim=1).max())
    alpha = 1e-3
    t0 = clock_start(codebook, alpha)
    assert t0 == math.ceil(math.log(max_norm) / alpha)
    assert float(radius(alpha, torch.tensor(t0))) >= max_norm > float(radius(alpha, torch.tensor(t0 - 1)))
    assert clock_start(codebook / (2 * max_norm), 0.0) == 0
    with pytest.raises(ConversionError, match="unit-ball"):
        clock_start(codebook, 0.0)

    src = save(tmp_path / "in.ckpt", with_codebook(sources["vq-f8-n256"], codebook))
    convert_checkpoint(src, tmp_path / "out.ckpt", bbnr_alpha=alpha, log=lambda _: None)
    node = vq_model_node(OmegaConf.to_container(OmegaConf.load(tmp_path / "out.yaml")))
    model = build_vq_model(node, load_out(tmp_path / "out.ckpt")["state_dict"])
    model.quantize.after_optimizer_step()  # the first norm-bound step moves nothing
    assert torch.equal(model.quantize.embedding.weight.detach(), codebook)


def test_arc_weight_restart_gives_full_weight_at_t0(tmp_path, sources):
    src = save(tmp_path / "in.ckpt", with_codebook(sources["vq-f8-n256"], random_codebook(256, 4)))
    clock = convert_checkpoint(src, tmp_path / "a.ckpt", log=lambda _: None)
    restart = convert_checkpoint(src, tmp_path / "b.ckpt", arc_weight="restart", log=lambda _: None)
    t0 = clock.conversion.clock_start
    assert clock.conversion.arc_weight_at_start == pytest.approx(math.exp(-1e-4 * t0), rel=1e-6)
    assert any("effectively off" in w for w in clock.warnings)
    assert restart.conversion.arc_weight_at_start == pytest.approx(1.0, rel=1e-6)
    node = vq_model_node(OmegaConf.to_container(OmegaConf.load(tmp_path / "b.yaml")))
    model = build_vq_model(node, load_out(tmp_path / "b.ckpt")["state_dict"])
    assert float(model.quantize.arc_weight) == pytest.approx(1.0, rel=1e-6)
    model.quantize.clock += 1000
    assert float(model.quantize.arc_weight) == pytest.approx(math.exp(-1e-4 * 1000), rel=1e-6)


def test_codebook_statistics_find_duplicates():
    codebook = random_codebook(64, 8)
    codebook[5] = codebook[7] * 2.0  # same direction, other norm: one shadows the other under cosine
    codebook[9] = codebook[3]
    codebook[11] = 0.0
    stats = codebook_statistics(codebook, near_duplicate_cosine=0.999, chunk_size=16)
    assert stats["exact_duplicates"] == 1
    assert stats["near_duplicates"]["pairs"] == 2 and stats["near_duplicates"]["codes_involved"] == 4
    assert sorted(sorted(e[:2]) for e in stats["near_duplicates"]["examples"]) == [[3, 9], [5, 7]]
    assert stats["norm"]["n_degenerate"] == 1 and stats["norm"]["min"] == 0.0


# ---- round trips -----------------------------------------------------------------------------
def test_equal_norms_keep_reconstructs_bit_for_bit(tmp_path, sources, image_folder):
    src = save(tmp_path / "in.ckpt", with_codebook(sources["vq-f8-n256"], random_codebook(256, 4, norms="equal")))
    report = convert_checkpoint(src, tmp_path / "out.ckpt", images=image_folder, image_size=32, log=lambda _: None)
    images = report.images
    assert images["tokens"] == 3 * 4 * 4 and images["tokens_changed"] == 0
    assert images["identical"] and images["psnr_before"] == images["psnr_after"]


def test_unit_ball_keeps_tokens_but_changes_reconstructions(tmp_path, sources, image_folder):
    src = save(tmp_path / "in.ckpt", with_codebook(sources["vq-f8-n256"], random_codebook(256, 4, norms="equal")))
    report = convert_checkpoint(src, tmp_path / "out.ckpt", codebook="unit-ball", images=image_folder, image_size=32,
                                log=lambda _: None)
    codebook = load_out(tmp_path / "out.ckpt")["state_dict"]["quantize.embedding.weight"]
    assert torch.allclose(codebook.norm(dim=1), torch.ones(256), atol=1e-6)
    assert report.conversion.clock_start == 0 and report.conversion.codes_rescaled == 256
    assert report.images["tokens_changed"] == 0 and not report.images["identical"]
    assert any("unit ball" in w for w in report.warnings)


def test_unequal_norms_token_changes_match_direct_count(tmp_path, sources, image_folder):
    source = with_codebook(sources["vq-f8-n256"], random_codebook(256, 4))
    src = save(tmp_path / "in.ckpt", source)
    report = convert_checkpoint(src, tmp_path / "out.ckpt", images=image_folder, image_size=32, log=lambda _: None)
    node = vq_model_node(OmegaConf.to_container(OmegaConf.load(tmp_path / "out.yaml")))
    model = build_vq_model(node, load_out(tmp_path / "out.ckpt")["state_dict"])
    from arcvq_plugin.convert.image_check import load_image_folder

    batch = load_image_folder(image_folder, size=32, max_images=8)
    with torch.no_grad():
        latents = model.quant_conv(model.encoder(batch)).permute(0, 2, 3, 1).reshape(-1, 4)
    codebook = source["quantize.embedding.weight"]
    by_l2 = torch.cdist(latents, codebook).argmin(dim=1)
    by_cosine = (torch.nn.functional.normalize(latents, dim=1) @ torch.nn.functional.normalize(codebook, dim=1).T).argmax(1)
    assert report.images["tokens_changed"] == int((by_l2 != by_cosine).sum()) > 0
    _, indices = reconstruct(model, batch)
    assert torch.equal(indices, by_cosine)


def test_yaml_ckpt_path_initialises_the_model(tmp_path, sources):
    src = save(tmp_path / "in.ckpt", with_codebook(sources["vqgan_imagenet_f16_1024"], random_codebook(1024, 256)))
    report = convert_checkpoint(src, tmp_path / "out.ckpt", resolution=32, log=lambda _: None)
    config = OmegaConf.load(tmp_path / "out.yaml")
    config.model.params.lossconfig = IDENTITY
    model = instantiate_from_config(config.model)
    assert int(model.quantize.clock) == report.conversion.clock_start > 0
    assert torch.equal(model.quantize.embedding.weight.detach(), random_codebook(1024, 256))


def test_cli(tmp_path, sources, capsys):
    src = save(tmp_path / "in.ckpt", sources["vq-f8-n256"])
    assert cli_main([src, str(tmp_path / "out.ckpt"), "--bbnr-alpha", "3e-4", "--skip-near-duplicates"]) == 0
    assert "vq-f8-n256" in capsys.readouterr().out
    assert OmegaConf.load(tmp_path / "out.yaml").model.params.quantizer_config.params.bbnr_alpha == 3e-4
    assert cli_main([src, str(tmp_path / "out.ckpt")]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main([src, str(tmp_path / "o2.ckpt"), "--bbnr-alpha", "-1"]) == 2
    assert "bbnr_alpha" in capsys.readouterr().err


# ---- bad input and failing writes ------------------------------------------------------------
def test_cli_refuses_bad_numbers_an_empty_image_folder_and_a_read_only_folder(tmp_path, sources, capsys, read_only):
    src = save(tmp_path / "in.ckpt", sources["vq-f8-n256"])
    assert cli_main([src, str(tmp_path / "a.ckpt"), "--arc-gamma-decay", "inf"]) == 2
    assert "arc_gamma_decay must be a finite number >= 0, got inf" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main([src, str(tmp_path / "a.ckpt"), "--images", str(tmp_path / "empty"), "--image-size", "32"]) == 2
    assert f"no images (.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff) in '{tmp_path / 'empty'}'" in capsys.readouterr().err
    Image.new("L", (40, 40)).save(tmp_path / "empty" / "grey.png")  # read as RGB, but 30 px is no multiple of f8
    assert cli_main([src, str(tmp_path / "a.ckpt"), "--images", str(tmp_path / "empty"), "--image-size", "30"]) == 2
    assert "image_size must be a multiple of the downsampling factor 8, got 30" in capsys.readouterr().err
    (tmp_path / "empty" / "grey.png").unlink()
    locked = read_only(tmp_path / "locked")
    assert cli_main([src, str(locked / "a.ckpt")]) == 2
    assert f"cannot write into '{locked}' (read-only or not a folder)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "in.ckpt", "locked"] and not any(locked.iterdir())


def test_a_full_disk_leaves_no_partial_file_and_the_old_output_intact(tmp_path, sources, capsys, monkeypatch):
    import errno

    src = save(tmp_path / "in.ckpt", sources["vq-f8-n256"])
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"user's file")
    real_save = torch.save

    def save_then_fail(obj, path, *args, **kwargs):
        real_save({"half": torch.zeros(3)}, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(converter_module.torch, "save", save_then_fail)
    assert cli_main([src, str(out), "--force", "--skip-near-duplicates"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ckpt", "out.ckpt"]
