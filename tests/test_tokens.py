"""arcvq_plugin.tokens: the token-grid file format, validation, and encode/decode on an untrained tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from arcvq_plugin.atomic_outputs import OutputError
from arcvq_plugin.tokens import (TOKEN_FORMAT, codebook_size, decode_indices, decode_to_folder, encode_indices,
                                 load_token_grids, save_token_grids, tokenizer_of)

DDCONFIG = dict(double_z=False, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    from arcvq_plugin.ldm import VQModel

    return VQModel(ddconfig=DDCONFIG, lossconfig={"target": "torch.nn.Identity"}, n_embed=300, embed_dim=4,
                   quantizer_config={"target": "arcvq_plugin.ArcQuantizer"}).eval()


def test_save_and_load_round_trip(tmp_path):
    grids = np.random.default_rng(0).integers(0, 300, size=(5, 4, 6)).astype(np.uint16)
    sidecar = save_token_grids(tmp_path / "t.npy", grids, 300, source={"split": "validation"})
    meta = json.loads(sidecar.read_text())
    assert meta == {"format": TOKEN_FORMAT, "codebook_size": 300, "shape": [5, 4, 6], "dtype": "uint16",
                    "source": {"split": "validation"}}
    loaded, loaded_meta = load_token_grids(tmp_path / "t.npy")
    assert np.array_equal(loaded, grids) and loaded_meta == meta


def test_save_refuses_overwrite_and_bad_grids(tmp_path):
    grids = np.zeros((1, 2, 2), np.uint8)
    save_token_grids(tmp_path / "t.npy", grids, 4)
    with pytest.raises(OutputError, match="--force"):
        save_token_grids(tmp_path / "t.npy", grids, 4)
    save_token_grids(tmp_path / "t.npy", grids + 1, 4, force=True)
    assert np.load(tmp_path / "t.npy").max() == 1
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        save_token_grids(tmp_path / "u.npy", grids + 4, 4)
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        save_token_grids(tmp_path / "u.npy", np.zeros((2, 2), np.uint8), 4)
    with pytest.raises(ValueError, match=".npy"):
        save_token_grids(tmp_path / "u.bin", grids, 4)


def test_load_needs_the_sidecar(tmp_path):
    np.save(tmp_path / "bare.npy", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_token_grids(tmp_path / "bare.npy")


def test_encode_decode_shapes_and_dtype(tokenizer, tmp_path):
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    ids = encode_indices(tokenizer, images)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.int64 and int(ids.max()) < 300
    assert codebook_size(tokenizer) == 300
    assert decode_indices(tokenizer, ids).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\[0, 300\)"):
        decode_indices(tokenizer, torch.full((1, 8, 8), 300))
    paths = decode_to_folder(tokenizer, ids.numpy().astype(np.uint16), tmp_path / "out", batch_size=2)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png"]
    with pytest.raises(OutputError, match="not overwriting"):
        decode_to_folder(tokenizer, ids.numpy(), tmp_path / "out")


def test_tokenizer_of_rejects_other_models():
    with pytest.raises(ValueError, match="not a VQ tokenizer"):
        tokenizer_of(nn.Linear(2, 2))
