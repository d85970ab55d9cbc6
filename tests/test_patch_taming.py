"""arcvq-patch and the taming-transformers series on a clone in upstream's real layout.

The clone (tests/upstream_clones.py) has upstream's namespace package ``taming/`` while PyPI's
taming-transformers-rom1504, a regular package, stays installed: a clone's ``python main.py``
used to import that copy. Through ``arcvq-patch check / apply / revert``, the patched main.py
trains the tiny ArcVQ config and the tiny baseline on one CPU process and on two (gloo, with the
strategy the patched main.py picks for ``--gpus 0,1``, discriminator active), ticks the clock once
per optimizer step, accumulates gradients, resumes a SIGUSR1 checkpoint written mid-epoch exactly,
and every model class of the touched file trains or is refused with its reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arcvq_plugin.patching import load_all_series
from arcvq_plugin.patching.cli import main as arcvq_patch
from upstream_clones import (assert_same_training_state, build_taming_clone, ddp_on_two_cpus, git,
                             last_checkpoint, manifest, newest_run, run_main, run_script, sha256,
                             snapshot, tiny_config)

UPSTREAM = "taming-transformers"
MANIFEST = manifest(UPSTREAM)
TOUCHED = sorted(MANIFEST["files"])
OWN_MODEL = "taming.models.vqgan.VQModel"
OUR_MODEL = "arcvq_plugin.taming.VQModel"
UPSTREAM_DATA = "main.DataModuleFromConfig"


@pytest.fixture()
def taming_clone(tmp_path: Path) -> Path:
    return build_taming_clone(tmp_path)


@pytest.fixture()
def patched_clone(taming_clone: Path) -> Path:
    assert arcvq_patch(["apply", str(taming_clone)]) == 0
    return taming_clone


def config(tmp: Path, name: str, **kwargs) -> Path:
    kwargs.setdefault("model_target", OWN_MODEL)
    kwargs.setdefault("data_target", UPSTREAM_DATA)
    return tiny_config(tmp, name, "taming/tiny_arcvq.yaml", **kwargs)


def test_series_manifest_matches_patches() -> None:
    (series,) = [s for s in load_all_series() if s.upstream == UPSTREAM]
    assert series.commit.startswith("3ba01b2")
    assert list(series.paths) == TOUCHED
    assert [p.name[:4] for p in series.patches] == ["0001", "0002", "0003", "0004", "0005"]


def test_the_clone_has_upstreams_layout_and_the_pypi_copy_shadows_it(taming_clone: Path) -> None:
    """The situation users meet: unpatched, the clone's main.py imports the installed copy."""
    assert not (taming_clone / "taming" / "__init__.py").exists()
    script = "import sys; sys.argv = ['main.py', '--help']; exec(open('main.py').read())"
    env_check = run_script(taming_clone, "import taming, os; print(os.path.dirname(taming.__file__))")
    assert "site-packages" in env_check  # a regular package wins over the clone's namespace package
    with pytest.raises(AssertionError, match="cannot import name 'custom_collate'"):
        run_script(taming_clone, script)


def test_apply_train_resume_revert_on_one_process(taming_clone: Path, tmp_path: Path, capsys) -> None:
    clone = taming_clone
    before = snapshot(clone)
    assert arcvq_patch(["check", str(clone)]) == 0
    assert arcvq_patch(["apply", str(clone)]) == 0
    for path in TOUCHED:
        assert sha256(clone / path) == MANIFEST["files"][path]["patched_sha256"], path
    changed = {p for p, data in snapshot(clone).items() if before.get(p) != data}
    assert changed == set(TOUCHED) | {f".arcvq-patch/{UPSTREAM}/original/{p}" for p in TOUCHED} | {
        f".arcvq-patch/{UPSTREAM}/record.json"}
    capsys.readouterr()
    assert arcvq_patch(["apply", str(clone)]) == 0
    assert "already applied" in capsys.readouterr().out

    # the clone's own VQModel (PyPI's has no quantizer_config): ArcVQ, baseline, and our subclass
    run_main(clone, config(tmp_path, "arc"))
    arc = last_checkpoint(clone)
    assert arc["global_step"] == 2 * 2 and int(arc["state_dict"]["quantize.clock"]) == 2  # 8 images, batch 4
    run_main(clone, config(tmp_path, "base", quantizer=False))
    base = last_checkpoint(clone)
    assert "quantize.clock" not in base["state_dict"]
    assert set(arc["state_dict"]) == set(base["state_dict"]) | {"quantize.clock"}
    run_main(clone, config(tmp_path, "ours", model_target=OUR_MODEL))
    assert int(last_checkpoint(clone)["state_dict"]["quantize.clock"]) == 2

    # preemption: 2 epochs x 3 batches, accumulation 2, SIGUSR1 after batch 4 (mid-epoch, mid-window)
    resume = dict(train_length=12, model__params__lossconfig__params__disc_start=1)
    common = ["--max_epochs", "2", "--accumulate_grad_batches", "2"]
    run_main(clone, config(tmp_path, "straight", **resume), *common)
    straight = last_checkpoint(clone)
    assert straight["global_step"] == 2 * 4 and int(straight["state_dict"]["quantize.clock"]) == 4
    preempted = config(tmp_path, "preempted", **resume,
                       lightning__callbacks__stop={"target": "upstream_clones.SignalAndStop", "params": {"after": 4}},
                       lightning__modelcheckpoint={"params": {"save_last": False}})
    run_main(clone, preempted, *common)
    signal_checkpoint = newest_run(clone) / "checkpoints" / "last.ckpt"
    assert "arcvq_accumulated_gradients" in torch.load(signal_checkpoint, weights_only=True)
    run_main(clone, config(tmp_path, "resume_settings", **resume, lightning__modelcheckpoint={"params": {"save_last": True}},
                           lightning__callbacks__stop={"params": {"after": 1000}}),
             "-r", str(signal_checkpoint), *common)
    resumed = torch.load(signal_checkpoint.with_name("last-v1.ckpt"), weights_only=True)
    assert_same_training_state(straight, resumed)

    assert arcvq_patch(["revert", str(clone)]) == 0
    assert snapshot(clone) == before
    assert git(clone, "status", "--porcelain", "--untracked-files=no") == ""
    assert arcvq_patch(["revert", str(clone)]) == 0  # nothing left to revert


def test_two_processes_with_the_strategy_main_py_picks_for_two_gpus(patched_clone: Path, tmp_path: Path) -> None:
    clone = patched_clone
    ddp = ddp_on_two_cpus(clone)
    active = dict(train_length=16, model__params__lossconfig__params__disc_start=0)  # 2 batches per rank
    run_main(clone, config(tmp_path, "ddp_arc", **active), *ddp)
    arc = last_checkpoint(clone)
    assert arc["global_step"] == 2 * 2 and int(arc["state_dict"]["quantize.clock"]) == 2
    assert len(arc["arcvq_random_states"]) == 2
    run_main(clone, config(tmp_path, "ddp_base", quantizer=False, **active), *ddp)
    assert last_checkpoint(clone)["global_step"] == 2 * 2


MODEL_CLASSES = r"""
import pytorch_lightning as pl, torch
from torch.utils.data import DataLoader
import main  # binds taming to this clone
from taming.models import vqgan

dd = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
          num_res_blocks=1, attn_resolutions=[], dropout=0.0)
gan = dict(target="arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator",
           params=dict(disc_start=0, disc_num_layers=1, disc_ndf=8, perceptual_weight=0.0))
images = [{"image": torch.rand(16, 16, 3) * 2 - 1} for _ in range(4)]
labels = [{"segmentation": torch.nn.functional.one_hot(torch.randint(0, 5, (16, 16)), 5).float()} for _ in range(4)]
temperature = dict(target="taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                   params=dict(warm_up_steps=1, max_decay_steps=10, lr_min=0.5, lr_max=1.0, lr_start=1.0))
cases = [
    ("VQModel", lambda: vqgan.VQModel(dd, gan, 16, 4), images),
    ("VQSegmentationModel", lambda: vqgan.VQSegmentationModel(
        5, dict(dd, in_channels=5, out_ch=5), dict(target="taming.modules.losses.segmentation.BCELossWithQuant"),
        16, 4, image_key="segmentation"), labels),
    ("GumbelVQ", lambda: vqgan.GumbelVQ(dd, gan, 16, 8, temperature), images),  # embed_dim = z_channels
    ("VQNoDiscModel", lambda: vqgan.VQNoDiscModel(dd, gan, 16, 4), images),
    ("EMAVQ", lambda: vqgan.EMAVQ(dd, gan, 16, 4), images),
]
for name, build, data in cases:
    try:
        model = build()
    except NotImplementedError as refusal:
        print("REFUSED", name, "|", refusal)
        continue
    model.learning_rate = 1e-3
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    print("TRAINED", name, trainer.global_step, moved > 0)
"""


def test_every_model_class_trains_a_step_or_is_refused_with_its_reason(patched_clone: Path) -> None:
    lines = [line for line in run_script(patched_clone, MODEL_CLASSES).splitlines()
             if line.startswith(("TRAINED", "REFUSED"))]
    assert lines[:3] == ["TRAINED VQModel 4 True",  # 2 batches x 2 optimizers
                         "TRAINED VQSegmentationModel 2 True",  # one optimizer, automatic optimisation
                         "TRAINED GumbelVQ 4 True"]
    assert lines[3].startswith("REFUSED VQNoDiscModel | VQNoDiscModel does not train at this taming commit")
    assert "pl.TrainResult" in lines[3]
    assert lines[4].startswith("REFUSED EMAVQ | EMAVQ cannot be built at this taming commit")
    assert len(lines) == 5


def test_refuses_dirty_tree(taming_clone: Path, capsys) -> None:
    clone = taming_clone
    util = clone / "taming" / "util.py"
    util.write_text(util.read_text() + "# local edit\n")
    before = snapshot(clone)
    assert arcvq_patch(["check", str(clone)]) == 1
    assert arcvq_patch(["apply", str(clone)]) == 1
    assert "uncommitted changes in taming/util.py" in capsys.readouterr().err
    assert snapshot(clone) == before
    assert arcvq_patch(["apply", str(clone), "--force"]) == 0
    assert arcvq_patch(["revert", str(clone)]) == 0
    assert snapshot(clone) == before


def test_refuses_unknown_commit_and_force_reverts_byte_exact(taming_clone: Path, capsys) -> None:
    clone = taming_clone
    main = clone / "main.py"
    main.write_text(main.read_text().replace('        help="postfix for logdir",',
                                             '        help="postfix for the log folder",'))
    git(clone, "commit", "-qam", "local change")
    before = snapshot(clone)
    assert arcvq_patch(["apply", str(clone)]) == 1
    err = capsys.readouterr().err
    assert "unknown commit" in err and "main.py" in err and "--force" in err
    assert snapshot(clone) == before
    assert arcvq_patch(["apply", str(clone), "--force"]) == 0
    assert "postfix for the log folder" in main.read_text()
    main.write_text(main.read_text() + "# edited after patching\n")
    assert arcvq_patch(["revert", str(clone)]) == 1  # would discard the edit
    assert "changed since" in capsys.readouterr().err
    assert arcvq_patch(["revert", str(clone), "--force"]) == 0
    assert snapshot(clone) == before


def test_partially_applicable_series_changes_nothing(taming_clone: Path, capsys) -> None:
    clone = taming_clone
    vqgan = clone / "taming" / "models" / "vqgan.py"
    vqgan.write_text(vqgan.read_text().replace("        rec_loss = log_dict_ae[\"val/rec_loss\"]\n",
                                               "        rec_loss = log_dict_ae[\"val/rec_loss\"]  # mine\n", 1))
    git(clone, "commit", "-qam", "conflicting change")
    before = snapshot(clone)
    assert arcvq_patch(["apply", str(clone), "--force"]) == 1
    err = capsys.readouterr().err
    assert "0003-" in err and "does not apply" in err and "nothing was changed" in err
    assert snapshot(clone) == before  # 0001 and 0002 applied in staging only
    assert not (clone / ".arcvq-patch").exists()


def test_not_a_supported_clone(tmp_path: Path, capsys) -> None:
    (tmp_path / "main.py").write_text("print('hi')\n")
    assert arcvq_patch(["check", str(tmp_path)]) == 2
    assert "not a clone of a supported upstream" in capsys.readouterr().err
