"""Writing a command's outputs so that nothing is half-written and nothing a user owns is lost.

- :func:`check_output_path`: before any work, an output that exists (without ``force``), that is
  not a file, whose folder cannot be written, or that lies inside one of the command's inputs is
  an :class:`OutputError` naming it.
- :class:`AtomicOutputs`: a set of files written to temporary files beside their destinations and
  moved in place together (``os.replace``, atomic on one file system) only by ``publish()``; an
  exception (a full disk, Ctrl-C) before that removes the temporary files and leaves every
  existing file untouched.
- :func:`save_torch`: ``torch.save`` whose write failures (a full disk) are OSErrors, as every
  other file write's are: torch's zip writer reports them as RuntimeError.
- :func:`write_file_atomic`, :func:`write_text_atomic`, :func:`save_torch_atomic`: one file written beside its destination and
  renamed onto it, so that a reader (or a restarted run) never finds half a file.
- :class:`StagedFolder`: files of one output folder, written into a hidden staging folder beside it
  and moved into it only when every file is written.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

__all__ = ["AtomicOutputs", "OutputError", "StagedFolder", "check_output_path", "check_writable_folder", "save_torch",
           "save_torch_atomic", "write_file_atomic", "write_text_atomic"]


class OutputError(ValueError):
    """An output that cannot or must not be written; the message names it and says what to do."""


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """OutputError unless ``folder`` (or, if it does not exist yet, its nearest existing ancestor,
    where it would be created) is a folder this process may write into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what}: {str(folder)!r} exists and is not a folder")
    ancestor = _existing_ancestor(folder)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: cannot write into {str(ancestor)!r} (read-only or not a folder); "
                          "choose another output location")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_path(path: str | os.PathLike, what: str, *, force: bool = False, folder: bool = False,
                      names: Iterable[str] = (), inputs: Optional[Mapping[str, str | os.PathLike]] = None) -> None:
    """Refuse, before any work, an output ``path`` (a file, or with ``folder=True`` a folder that
    will receive the files ``names``) that cannot be written or must not be.

    Args:
        what: how the message names the output (e.g. ``"--json"``).
        force: existing files may be replaced (never a folder by a file).
        inputs: ``{name: path}`` of the command's inputs; the output may be neither one of them nor
            inside one of the folders among them.
    """
    path = Path(path)
    resolved = path.resolve()
    for name, source in (inputs or {}).items():
        source = Path(source).resolve()
        if _inside(resolved, source):
            raise OutputError(f"{what} {str(path)!r} overlaps the input {name} {str(source)!r}: writing "
                              "there could replace or mix with what is read; choose an output outside it")
    targets = [path / n for n in names] if folder else [path]
    check_writable_folder(path if folder else path.parent, what)
    not_files = [str(t) for t in targets if t.exists() and not t.is_file()]
    if not_files:
        raise OutputError(f"{what}: {not_files[:3]} exist and are not files")
    taken = [str(t) for t in targets if t.exists()]
    if taken and not force:
        raise OutputError(f"{what}: {taken[:3]}{' ...' if len(taken) > 3 else ''} exist; not overwriting "
                          "(pass --force to replace)")


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, raising OSError when the file cannot be written.

    On a full disk torch's zip writer raises RuntimeError (``[enforce fail at inline_container.cc]
    unexpected pos ...`` or ``PytorchStreamWriter failed writing file``), not the OSError every
    other write raises; this turns it into ``OSError(ENOSPC)`` when the file system has no room
    left, else ``OSError(EIO)``, with torch's message, so that callers handle one exception type.
    """
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        stats = os.statvfs(Path(path).parent)
        code = errno.ENOSPC if stats.f_bavail == 0 or stats.f_favail == 0 else errno.EIO
        raise OSError(code, f"{os.strerror(code)} while torch.save wrote {str(path)!r} "
                            f"({str(err).splitlines()[0][:200]})") from err


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_file_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp)`` on ``.<name>.partial`` beside ``path``, then rename it onto ``path``.

    The folder must exist. When ``write`` raises, the temporary file is removed and an existing
    ``path`` stays as it was. ``temp`` has no meaningful suffix: writers that infer a format from
    the name (PIL) must be given it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``.<name>.partial`` beside ``path`` and rename it onto ``path``; the temporary
    file is removed when writing fails, and an existing ``path`` stays whole."""
    write_file_atomic(path, lambda tmp: tmp.write_text(text))


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """:func:`save_torch` into ``.<name>.partial`` beside ``path``, renamed onto ``path`` when complete."""
    write_file_atomic(path, lambda tmp: save_torch(obj, tmp))


class AtomicOutputs:
    """Temporary files beside their destinations, moved in place together on ``publish()``.

    Usage::

        with AtomicOutputs({"ckpt": out, "yaml": out_yaml}, force=False) as files:
            torch.save(obj, files.temp["ckpt"]); ...
            files.publish()

    Args:
        destinations: name -> final path.
        force: allow replacing existing destination files (default False: OutputError if any
            exists, checked up front and again just before publishing).
    """

    def __init__(self, destinations: Mapping[str, str | os.PathLike], *, force: bool = False) -> None:
        self.destinations = {name: Path(p) for name, p in destinations.items()}
        if len(set(self.destinations.values())) != len(self.destinations):
            raise OutputError(f"output paths must differ, got {[str(p) for p in self.destinations.values()]}")
        self.force = force
        self.temp: dict[str, Path] = {}
        self._check_destinations()

    def _check_destinations(self) -> None:
        for path in self.destinations.values():
            if not path.parent.is_dir():
                raise OutputError(f"output folder {str(path.parent)!r} does not exist")
            check_output_path(path, "output", force=self.force)

    def __enter__(self) -> "AtomicOutputs":
        for name, path in self.destinations.items():
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
            os.close(fd)
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp creates 0600; published files get the usual mode
            self.temp[name] = Path(temp)
        return self

    def publish(self) -> None:
        """fsync every temporary file, then ``os.replace`` each onto its destination."""
        self._check_destinations()
        for temp in self.temp.values():
            _fsync(temp)
        for name, temp in self.temp.items():
            os.replace(temp, self.destinations[name])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for temp in self.temp.values():
            temp.unlink(missing_ok=True)


class StagedFolder:
    """The files ``names`` (relative paths, e.g. ``images/000000.png``) of the output folder ``folder``, all or none.

    Usage::

        with StagedFolder(out_dir, ["000000.png", ...], force=False) as staged:
            image.save(staged.path("000000.png")); ...
            staged.publish()

    Files are written into a hidden staging folder beside ``folder`` (same file system) and
    ``publish()`` moves each into ``folder`` (created if needed) with ``os.replace``. Leaving the
    block without ``publish()`` (an error, a full disk, Ctrl-C) removes the staging folder, so
    ``folder`` is never left with a part of the output. Without ``force`` an existing file of that
    name is an OutputError, checked up front and again before publishing.
    """

    def __init__(self, folder: str | os.PathLike, names: Iterable[str], *, force: bool = False,
                 what: str = "output folder") -> None:
        self.folder, self.names, self.force, self.what = Path(folder), list(names), force, what
        if len(set(self.names)) != len(self.names) or any(
                Path(n).is_absolute() or ".." in Path(n).parts or not Path(n).name for n in self.names):
            raise ValueError(f"{what}: output names must be distinct paths relative to the folder, got {self.names[:3]}")
        self._staging: Optional[Path] = None
        self._check()

    def _check(self) -> None:
        check_output_path(self.folder, self.what, force=self.force, folder=True, names=self.names)

    def __enter__(self) -> "StagedFolder":
        parent = _existing_ancestor(self.folder)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name or 'output'}.", suffix=".partial",
                                              dir=parent))
        return self

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (one of ``names``) until ``publish()``."""
        if name not in self.names or self._staging is None:
            raise KeyError(f"{name!r} is not an output of this StagedFolder (or it is not open)")
        staged = self._staging / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def publish(self) -> list[Path]:
        """Move every staged file into the folder; returns the final paths."""
        missing = [n for n in self.names if not self.path(n).is_file()]
        if missing:
            raise OutputError(f"{self.what}: {missing[:3]} were never written")
        self._check()
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            _fsync(self.path(name))
        for name in self.names:
            (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path(name), self.folder / name)
        return [self.folder / n for n in self.names]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
