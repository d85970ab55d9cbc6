"""arcvq_plugin.inference: the one builder of inference models (loss -> nn.Identity, ckpt_path
cleared, strictness as an argument) behind arcvq-sample-ldm / arcvq-tokens, arcvq-eval and arcvq-convert."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.evaluation.model_eval import load_model
from arcvq_plugin.inference import CheckpointMismatch, build_inference_model, inference_config
from arcvq_plugin.ldm.checkpoints import load_for_inference

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "taming" / "tiny_arcvq.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    config = load_configs([str(CONFIG)])
    model = instantiate_from_config(config.model)
    with torch.no_grad():
        model.quantize.clock.fill_(17)
    return config, model.state_dict()


def test_config_is_cleared_of_checkpoints_and_loss():
    node = {"target": "x.Y", "params": {"ckpt_path": "a.ckpt", "lossconfig": {"target": "big.Loss"},
                                         "first_stage_config": {"target": "z.W", "params": {"ckpt_path": "b.ckpt"}}}}
    cleared = inference_config(OmegaConf.create(node))
    assert cleared["params"]["ckpt_path"] is None and cleared["params"]["lossconfig"] == {"target": "torch.nn.Identity"}
    assert cleared["params"]["first_stage_config"]["params"]["ckpt_path"] is None
    assert inference_config(node, keep_loss=True)["params"]["lossconfig"] == {"target": "big.Loss"}
    assert node["params"]["ckpt_path"] == "a.ckpt"  # the caller's config is not changed


def test_loads_every_weight_but_the_loss_in_eval_mode(trained):
    config, state = trained
    model = build_inference_model(config.model, state)
    assert isinstance(model.loss, torch.nn.Identity) and not model.training
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("loss."))
    assert int(model.quantize.clock) == 17
    kept = build_inference_model(config.model, state, keep_loss=True)
    assert torch.equal(kept.loss.discriminator.main[0].weight, state["loss.discriminator.main.0.weight"])


def test_strictness(trained):
    config, state = trained
    missing = {k: v for k, v in state.items() if k != "post_quant_conv.bias"}
    extra = {**state, "model_ema.decay": torch.tensor(0.99)}
    for broken, listed in ((missing, "missing in checkpoint (1): post_quant_conv.bias"),
                           (extra, "unexpected in checkpoint (1): model_ema.decay")):
        with pytest.raises(CheckpointMismatch, match=listed.replace("(", r"\(").replace(")", r"\)")):
            build_inference_model(config.model, broken, source="run.ckpt")
        build_inference_model(config.model, broken, strict=False)  # tolerated when not strict
    resized = {**state, "quantize.embedding.weight": torch.zeros(64, 8)}
    for strict in (True, False):  # a shape that does not fit never loads
        with pytest.raises(CheckpointMismatch, match=r"(?s)run\.ckpt does not fit the model arcvq_plugin\.taming\.VQModel"
                                                     r".*quantize\.embedding\.weight: checkpoint \(64, 8\) vs model \(32, 8\)"):
            build_inference_model(config.model, resized, strict=strict, source="run.ckpt")


def test_the_three_inference_paths_share_the_builder(trained, tmp_path):
    from arcvq_plugin.convert.checkpoint_io import ConversionError
    from arcvq_plugin.convert.model_config import build_vq_model

    config, state = trained
    resized = {**state, "quantize.embedding.weight": torch.zeros(64, 8)}
    ckpt = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": resized}, ckpt)
    expected = r"quantize\.embedding\.weight: checkpoint \(64, 8\) vs model \(32, 8\)"
    with pytest.raises(CheckpointMismatch, match=expected):
        load_for_inference([str(CONFIG)], str(ckpt))
    with pytest.raises(CheckpointMismatch, match=expected):
        load_model(config, {"state_dict": resized})
    with pytest.raises(ConversionError, match=expected):
        build_vq_model(OmegaConf.to_container(config.model), resized)
    model = load_for_inference([str(CONFIG)], _saved(tmp_path, state))
    assert int(model.quantize.clock) == 17 and isinstance(model.loss, torch.nn.Identity)


def _saved(tmp_path: Path, state: dict) -> str:
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    return str(tmp_path / "run.ckpt")
