"""check / apply / revert a patch series on a clone: all patches or none, byte-exact revert.

``apply`` never runs ``git apply`` inside the clone: it copies the touched files into a
temporary folder, applies every patch there in order, and only when all of them applied writes
the originals to ``<clone>/.arcvq-patch/<upstream>/`` and then the patched files into the clone
(each by an atomic rename; a failure part-way restores the files already written). ``revert``
puts the kept originals back and checks every byte against the sha256 recorded at apply time.

A clone (or a touched file's folder) this process may not write into is refused before anything
is written; a write that fails anyway (a full disk) is rolled back completely: the touched files
keep their bytes, no ``.arcvq-patch/`` record and no ``*.arcvq-patch-tmp`` file stay behind, and
the caller gets the OSError.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..atomic_outputs import OutputError, check_writable_folder
from .clone import RECORD_DIR, CloneState, inspect_clone, record_path
from .series import PatchSeries, sha256_of

__all__ = ["PatchRefused", "apply_series", "check_clone", "refusals", "revert_series"]


class PatchRefused(RuntimeError):
    """The clone is not in a state the operation accepts; the message says why and what to do."""


def refusals(state: CloneState) -> list[str]:
    """Reasons ``apply`` refuses without ``--force`` (empty: safe to apply)."""
    reasons = []
    if state.dirty:
        reasons.append(f"the work tree has uncommitted changes in {', '.join(state.dirty)} "
                       "(commit or stash them first)")
    changed = [p for p, s in state.file_states.items() if s != "original"]
    if changed:
        where = f"HEAD {state.head[:7]} is an unknown commit and " if state.head and not state.at_pinned_commit else ""
        reasons.append(f"{where}{', '.join(changed)} differ from the supported commit "
                       f"{state.series.commit[:7]} of {state.series.upstream}")
    return reasons


def check_clone(clone: Path, series: PatchSeries) -> tuple[CloneState, list[str]]:
    """The clone's state and the reasons an ``apply`` would be refused (none: it would proceed)."""
    state = inspect_clone(clone, series)
    if state.patched:
        return state, []
    if state.record is not None:
        return state, [_stale_record_reason(state)]
    return state, refusals(state)


def _stale_record_reason(state: CloneState) -> str:
    return (f"{RECORD_DIR}/{state.series.upstream}/ records an earlier apply, but the files are no longer "
            "all patched; run `arcvq-patch revert --force` first")


def _stage(clone: Path, series: PatchSeries) -> dict[str, bytes]:
    """Apply every patch, in order, to copies of the touched files; returns path -> patched bytes.

    Raises PatchRefused naming the first patch that does not apply (the clone is untouched).
    """
    with tempfile.TemporaryDirectory(prefix="arcvq-patch-") as tmp:
        work = Path(tmp) / "tree"
        for path in series.paths:
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clone / path, work / path)
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": tmp}
        for patch in series.patches:
            result = subprocess.run(["git", "apply", str(patch)], cwd=work, env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise PatchRefused(f"patch {patch.name} does not apply to {clone}: "
                                   f"{result.stderr.strip()}; nothing was changed")
        return {path: (work / path).read_bytes() for path in series.paths}


def _refuse_unwritable(clone: Path, series: PatchSeries) -> None:
    """PatchRefused unless the clone's root and the folder of every touched file can be written."""
    folders = sorted({clone} | {(clone / path).parent for path in series.paths})
    try:
        for folder in folders:
            check_writable_folder(folder, "arcvq-patch")
    except OutputError as err:
        raise PatchRefused(f"{err}: the clone must be writable (patched files and {RECORD_DIR}/ are "
                           "written into it); nothing was changed") from None


def _write_atomic(target: Path, data: bytes) -> None:
    """Replace ``target``'s bytes by a rename, keeping its permission bits; no temporary file
    stays behind when writing fails."""
    tmp = target.with_name(target.name + ".arcvq-patch-tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        shutil.copymode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _replace_all(clone: Path, contents: dict[str, bytes], fallback: dict[str, bytes]) -> None:
    """Write every file of ``contents``; on any failure put back ``fallback`` for those written."""
    written = []
    try:
        for path, data in contents.items():
            _write_atomic(clone / path, data)
            written.append(path)
    except BaseException:
        for path in written:
            _write_atomic(clone / path, fallback[path])
        raise


def apply_series(clone: Path, series: PatchSeries, *, force: bool = False) -> str:
    """Apply the whole series to ``clone`` or nothing; returns what was done.

    Idempotent: a clone whose files are already the patched bytes is left alone. Refuses (raises
    PatchRefused) a dirty work tree or files that differ from the pinned commit unless ``force``;
    refuses always when a patch does not apply or a stale record exists.
    """
    clone = Path(clone).resolve()
    state = inspect_clone(clone, series)
    if state.patched:
        note = "" if state.record is not None else (
            " (patched without arcvq-patch: no originals kept; `git checkout` undoes it)")
        return f"{series.upstream} patches already applied to {clone}: nothing to do{note}"
    if state.record is not None:
        raise PatchRefused(_stale_record_reason(state))
    reasons = refusals(state)
    if reasons and not force:
        raise PatchRefused("refusing to patch: " + "; ".join(reasons) + ". Use --force to apply anyway "
                           "(originals are kept for `arcvq-patch revert`)")
    _refuse_unwritable(clone, series)
    originals = {path: (clone / path).read_bytes() for path in series.paths}
    patched = _stage(clone, series)
    keep = record_path(clone, series)
    try:
        for path, data in originals.items():
            (keep / "original" / path).parent.mkdir(parents=True, exist_ok=True)
            (keep / "original" / path).write_bytes(data)
        record = {
            "upstream": series.upstream, "commit": series.commit, "head": state.head, "forced": bool(reasons),
            "files": {path: {"original_sha256": sha256_of(keep / "original" / path),
                             "patched_sha256": _sha_bytes(patched[path])} for path in series.paths},
        }
        (keep / "record.json").write_text(json.dumps(record, indent=2) + "\n")
        _replace_all(clone, patched, originals)
    except BaseException:
        _remove_record(clone, series)
        raise
    forced = f" (forced past: {'; '.join(reasons)})" if reasons else ""
    return (f"applied {len(series.patches)} {series.upstream} patches to {clone}: "
            f"{', '.join(series.paths)}{forced}")


def _sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remove_record(clone: Path, series: PatchSeries) -> None:
    shutil.rmtree(record_path(clone, series), ignore_errors=True)
    top = clone / RECORD_DIR
    if top.is_dir() and not any(top.iterdir()):
        top.rmdir()


def revert_series(clone: Path, series: PatchSeries, *, force: bool = False) -> str:
    """Put back the bytes kept by ``apply``; returns what was done.

    Refuses files edited since apply unless ``force`` (their edits would be lost), and always
    refuses kept originals whose sha256 no longer matches the record.
    """
    clone = Path(clone).resolve()
    state = inspect_clone(clone, series)
    record = state.record
    if record is None:
        if state.unpatched:
            return f"{clone} is not patched: nothing to revert"
        raise PatchRefused(f"no arcvq-patch record in {RECORD_DIR}/{series.upstream}/, so no originals to "
                           f"restore ({', '.join(f'{p}: {s}' for p, s in state.file_states.items())}); "
                           "`git checkout -- <files>` restores committed versions")
    keep = record_path(clone, series) / "original"
    edited = [p for p, fp in record["files"].items() if sha256_of(clone / p) != fp["patched_sha256"]]
    if edited and not force:
        raise PatchRefused(f"refusing to revert: {', '.join(edited)} changed since arcvq-patch applied the "
                           "series; reverting would discard those edits. Use --force to revert anyway")
    originals = {}
    for path, fp in record["files"].items():
        data = (keep / path).read_bytes()
        if _sha_bytes(data) != fp["original_sha256"]:
            raise PatchRefused(f"the kept original of {path} in {keep} does not match its recorded sha256; "
                               "nothing was changed")
        originals[path] = data
    _refuse_unwritable(clone, series)
    current = {path: (clone / path).read_bytes() for path in originals}
    _replace_all(clone, originals, current)
    _remove_record(clone, series)
    return f"reverted {series.upstream} patches in {clone}: {', '.join(originals)} restored byte for byte"
