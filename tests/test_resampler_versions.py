"""The resampler's per-version rules, each pinned by a named test on a small random resampler:
4.5's temporal groups (one output per group over the union of its crops' keys, a 1-D time
sin-cos on the keys, id -1 adding nothing) and 1.0's keys (the stored query table upsampled)."""

import numpy as np
import torch
import torch.nn.functional as F

from minicpmv.model.positions import sincos_1d
from minicpmv.model.resampler import Resampler, upsampled_table


def _resampler(**kwargs) -> Resampler:
    torch.manual_seed(0)
    resampler = Resampler(4, 16, 2, 8, **kwargs)
    with torch.no_grad():
        for p in resampler.parameters():
            p.normal_(0, 0.5)
    return resampler.eval()


def _crops():
    torch.manual_seed(1)
    sizes = torch.tensor([[2, 3], [2, 3], [1, 2]])  # two frames of one group, then a lone crop
    x = torch.randn(3, 6, 8)
    x[2, 2:] = 99.0  # padding of the short crop: must never count
    return x, sizes


@torch.no_grad()
def test_4_5_still_crops_take_the_temporal_path_with_no_effect():
    """Quirk: 4.5 always passes time ids; a still crop (id -1) is a group of one whose time
    embedding is zero, so the output equals the plain 2-D resampler's."""
    resampler = _resampler()
    x, sizes = _crops()
    assert torch.equal(resampler(x, sizes, [[-1], [-1], [-1]]), resampler(x, sizes))


@torch.no_grad()
def test_4_5_group_attends_over_its_frames_keys_with_time_embeddings():
    """Quirk: a group of frames gives ONE output, its keys every valid token of every frame
    (frame-major), each plus that frame's 1-D time sin-cos (width = LLM hidden); values plain."""
    resampler = _resampler()
    x, sizes = _crops()
    out = resampler(x, sizes, [[4, 7], [10]])
    assert out.shape == (2, 4, 16)
    projected = resampler.ln_kv(resampler.kv_proj(x))  # (3, 6, 16)
    keys, values = [], []
    for crop, time in ((0, 4), (1, 7)):
        keys.append(projected[crop, :6] + resampler.key_position(2, 3) + sincos_1d(16, [time]))
        values.append(projected[crop, :6])
    query = (resampler.ln_q(resampler.query))[None]
    manual = resampler.attn(query, torch.cat(keys)[None], torch.cat(values)[None], need_weights=False)[0]
    torch.testing.assert_close(out[0], (resampler.ln_post(manual) @ resampler.proj)[0], atol=1e-5, rtol=0)
    lone = resampler(x[2:], sizes[2:], [[10]])
    torch.testing.assert_close(out[1], lone[0], atol=1e-6, rtol=0)


def test_4_5_time_embedding_is_numpy_float32_sincos():
    """The official table: [sin(t * w), cos(t * w)], w = 10000^(-k / (D/2)), numpy float32."""
    omega = 1.0 / 10000 ** (np.arange(8, dtype=np.float32) / np.float32(8.0))
    angles = np.float32(37) * omega
    expected = np.concatenate([np.sin(angles), np.cos(angles)])
    assert np.array_equal(sincos_1d(16, [37])[0].numpy(), expected.astype(np.float32))


@torch.no_grad()
def test_1_0_keys_get_the_stored_table_upsampled_bicubic():
    """Quirk: 1.0's keys get its stored 8x8 query table (not a computed sin-cos), resized to the
    patch grid with bicubic, align_corners=False, no antialias; queries get the table as stored."""
    resampler = Resampler(64, 16, 2, 8, query_pos_embed=True, key_positions="stored")
    with torch.no_grad():
        resampler.pos_embed.normal_()
    grid = resampler.pos_embed.reshape(1, 8, 8, 16).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    assert torch.equal(resampler.key_position(32, 32), expected.permute(0, 2, 3, 1).reshape(1024, 16))
    assert torch.equal(upsampled_table(resampler.pos_embed, 8, 8), resampler.pos_embed)
