"""`localize_queries`: each resampler query starts looking at its own block of the patch grid,
which is what lets a token hold the characters of its cells (research/demo-model-log.md)."""

from __future__ import annotations

import pytest
import torch

from minicpmv.model.initialization import localize_queries
from minicpmv.model.resampler import Resampler, _key_positions


def own_block_attention(resampler: Resampler, patch_side: int = 16) -> float:
    """Mean share of each query's attention on its own block, for random patch features."""
    torch.manual_seed(0)
    features = resampler.ln_kv(resampler.kv_proj(torch.randn(1, patch_side**2, 192)))
    keys = features + _key_positions(resampler.embed_dim, patch_side, patch_side)
    queries = resampler.ln_q(resampler.query).unsqueeze(0)
    weights = resampler.attn(queries, keys, features, need_weights=True)[1][0]  # (queries, patches)
    side = round(resampler.query.shape[0] ** 0.5)
    block = patch_side // side
    shares = []
    for query in range(side * side):
        top, left = (query // side) * block, (query % side) * block
        cells = [(top + r) * patch_side + left + c for r in range(block) for c in range(block)]
        shares.append(float(weights[query, cells].sum()))
    return sum(shares) / len(shares)


def test_queries_look_at_their_own_block():
    torch.manual_seed(1)
    resampler = Resampler(64, 256, 2, 192)
    torch.nn.init.normal_(resampler.query, std=0.02)
    with torch.no_grad():
        before = own_block_attention(resampler)
        localize_queries(resampler, 16)
        after = own_block_attention(resampler)
    # 4 of 256 patches: 1.6% by chance; random features pull against the positions (83% on the demo encoder's)
    assert before < 0.05 and after > 0.25, (before, after)


def test_a_grid_the_queries_do_not_tile_is_refused():
    with pytest.raises(ValueError, match="cannot point"):
        localize_queries(Resampler(60, 256, 2, 192), 16)
    with pytest.raises(ValueError, match="cannot point"):
        localize_queries(Resampler(64, 256, 2, 192), 12)
