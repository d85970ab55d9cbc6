"""Shared test set-up: taming/ldm import under Lightning 2.x, and nothing may download."""
import os

import pytest

from arcvq_plugin.compat import install_lightning_shims

install_lightning_shims()
# Any hub download attempt must fail fast rather than hang on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny models run fastest so, above all on a shared, loaded CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` makes ``folder`` read-only (mode 0555, restored afterwards). Root
    ignores mode bits, so for root ``os.access`` is also made to answer for ``folder`` what it
    answers a normal user (and for any user on a read-only mount): not writable."""
    import os
    import stat
    from pathlib import Path

    folders = []

    def make(folder):
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        folders.append(folder)
        if os.access(folder, os.W_OK):  # root
            real_access = os.access

            def access(path, mode, *args, **kwargs):
                inside = any(Path(path).resolve() == f or f in Path(path).resolve().parents for f in folders)
                return False if inside and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
        return folder

    yield make
    for folder in folders:
        os.chmod(folder, 0o755)

