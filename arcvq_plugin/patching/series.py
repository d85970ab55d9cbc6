"""A patch series for one upstream repository, read from ``patches/<upstream>/``.

Folder layout::

    patches/taming-transformers/
        0001-....patch ... 0005-....patch   applied in name order, each with ``git apply``
        upstream.json                        {"upstream", "repository", "commit",
                                              "files": {path: {"original_sha256", "patched_sha256"}}}
        README.md

``upstream.json`` fingerprints exactly the files the patches name; nothing else is read or written.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileFingerprint", "PatchSeries", "default_patches_root", "find_series", "load_all_series",
           "sha256_of"]

_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_patches_root() -> Path:
    """``patches/`` of the arcvq_plugin source tree this package was imported from."""
    return Path(__file__).resolve().parents[2] / "patches"


@dataclass(frozen=True)
class FileFingerprint:
    """sha256 of one touched file at the pinned commit (``original``) and after the series (``patched``)."""

    path: str
    original: str
    patched: str


@dataclass(frozen=True)
class PatchSeries:
    """Numbered patches against one pinned upstream commit.

    Attributes:
        upstream: short name (``taming-transformers``, ``latent-diffusion``).
        repository: upstream URL.
        commit: the full 40-hex commit the patches are written against.
        patches: the ``.patch`` files, in application order.
        files: fingerprints of every file the patches touch, sorted by path.
    """

    upstream: str
    repository: str
    commit: str
    patches: tuple[Path, ...]
    files: tuple[FileFingerprint, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files)

    @classmethod
    def load(cls, folder: Path) -> "PatchSeries":
        """Read ``folder/upstream.json`` and ``folder/*.patch``; ValueError if they disagree."""
        folder = Path(folder)
        manifest_path = folder / "upstream.json"
        if not manifest_path.is_file():
            raise ValueError(f"{folder}: no upstream.json (not a patch series folder)")
        manifest = json.loads(manifest_path.read_text())
        patches = tuple(sorted(folder.glob("*.patch")))
        if not patches:
            raise ValueError(f"{folder}: no .patch files")
        files = tuple(FileFingerprint(path, fp["original_sha256"], fp["patched_sha256"])
                      for path, fp in sorted(manifest["files"].items()))
        named = set()
        for patch in patches:
            for old, new in _DIFF_HEADER.findall(patch.read_text()):
                if old != new:
                    raise ValueError(f"{patch.name}: renames {old} -> {new}; series may only modify files")
                named.add(new)
        if named != {f.path for f in files}:
            raise ValueError(f"{folder}: the patches name {sorted(named)} but upstream.json fingerprints "
                             f"{sorted(f.path for f in files)}")
        commit = manifest["commit"]
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError(f"{manifest_path}: commit must be 40 hex digits, got {commit!r}")
        return cls(manifest["upstream"], manifest["repository"], commit, patches, files)


def load_all_series(root: Path | None = None) -> list[PatchSeries]:
    """Every series folder under ``root`` (default :func:`default_patches_root`)."""
    root = Path(root) if root is not None else default_patches_root()
    if not root.is_dir():
        raise ValueError(f"patches folder {root} does not exist (pass --patches DIR)")
    return [PatchSeries.load(d) for d in sorted(root.iterdir()) if (d / "upstream.json").is_file()]


def find_series(clone: Path, candidates: list[PatchSeries]) -> PatchSeries:
    """The series whose touched files all exist in ``clone``; ValueError naming what is missing."""
    clone = Path(clone)
    matches = [s for s in candidates if all((clone / p).is_file() for p in s.paths)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = "; ".join(f"{s.upstream}: {', '.join(s.paths)}" for s in candidates)
        raise ValueError(f"{clone} is not a clone of a supported upstream (expected the files of one of: {known})")
    raise ValueError(f"{clone} looks like several upstreams at once: {[s.upstream for s in matches]}")
