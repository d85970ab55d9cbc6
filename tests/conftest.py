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
