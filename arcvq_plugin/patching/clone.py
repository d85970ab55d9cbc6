"""What state a clone is in: which files match the pinned commit or the patched result, git HEAD
and uncommitted changes, and the record of an earlier ``arcvq-patch apply``."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .series import PatchSeries, sha256_of

__all__ = ["CloneState", "RECORD_DIR", "inspect_clone", "record_path"]

RECORD_DIR = ".arcvq-patch"
ORIGINAL = "original"
PATCHED = "patched"
MODIFIED = "modified"


def record_path(clone: Path, series: PatchSeries) -> Path:
    """``<clone>/.arcvq-patch/<upstream>/``: originals and ``record.json`` of an applied series."""
    return Path(clone) / RECORD_DIR / series.upstream


def _git(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True)


@dataclass
class CloneState:
    """Facts about a clone relative to one series.

    Attributes:
        file_states: path -> ``"original"`` (bytes of the pinned commit), ``"patched"`` (bytes after
            the series) or ``"modified"`` (neither).
        is_git: whether ``clone`` is the top of a git work tree.
        head: full HEAD commit, or None (not git / no commit).
        dirty: tracked paths with uncommitted changes (``git status``; untracked files ignored).
        record: the ``record.json`` of an earlier apply, or None.
    """

    clone: Path
    series: PatchSeries
    file_states: dict[str, str]
    is_git: bool
    head: str | None
    dirty: list[str] = field(default_factory=list)
    record: dict | None = None

    @property
    def unpatched(self) -> bool:
        return all(s == ORIGINAL for s in self.file_states.values())

    @property
    def patched(self) -> bool:
        return all(s == PATCHED for s in self.file_states.values())

    @property
    def at_pinned_commit(self) -> bool:
        return self.head == self.series.commit

    def describe(self) -> list[str]:
        """Human-readable lines: upstream, commit, file states, cleanliness, record."""
        s = self.series
        lines = [f"{self.clone}: {s.upstream} clone ({len(s.paths)} files touched by "
                 f"{len(s.patches)} patches against {s.commit[:7]})"]
        if not self.is_git:
            lines.append("not a git work tree: HEAD and uncommitted changes cannot be checked; "
                         "the file fingerprints decide")
        elif self.head is None:
            lines.append("git work tree without a commit")
        elif self.at_pinned_commit:
            lines.append(f"HEAD {self.head[:7]} is the supported commit")
        elif self.unpatched:
            lines.append(f"HEAD {self.head[:7]} is not {s.commit[:7]}, but the files the patches touch "
                         f"are byte-identical to it")
        elif self.patched:
            lines.append(f"HEAD {self.head[:7]}; the files the patches touch are the patched bytes")
        else:
            lines.append(f"HEAD {self.head[:7]} is an unknown commit (not {s.commit[:7]})")
        for path, state in self.file_states.items():
            lines.append(f"  {path}: {state}")
        if self.dirty:
            lines.append(f"uncommitted changes: {', '.join(self.dirty)}")
        if self.record is not None:
            lines.append(f"applied by arcvq-patch (originals kept in {RECORD_DIR}/{s.upstream}/)")
        return lines


def inspect_clone(clone: Path, series: PatchSeries) -> CloneState:
    """Fingerprint the series' files in ``clone`` and read its git HEAD, status and apply record."""
    clone = Path(clone).resolve()
    states = {}
    for fp in series.files:
        digest = sha256_of(clone / fp.path)
        states[fp.path] = ORIGINAL if digest == fp.original else PATCHED if digest == fp.patched else MODIFIED
    top = _git(clone, "rev-parse", "--show-toplevel")
    is_git = top.returncode == 0 and Path(top.stdout.strip()).resolve() == clone
    head, dirty = None, []
    if is_git:
        rev = _git(clone, "rev-parse", "--verify", "-q", "HEAD")
        head = rev.stdout.strip() if rev.returncode == 0 else None
        status = _git(clone, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
        if status.returncode != 0:
            raise RuntimeError(f"git status failed in {clone}: {status.stderr.strip()}")
        dirty = sorted(line[3:] for line in status.stdout.splitlines() if line.strip())
    record_file = record_path(clone, series) / "record.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    return CloneState(clone, series, states, is_git, head, dirty, record)
