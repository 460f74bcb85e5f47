"""An embedding table that skips its random init on the meta device."""

from __future__ import annotations

import torch
from torch import nn


def embedding(rows: int, dim: int) -> nn.Embedding:
    """nn.Embedding(rows, dim). On the meta device (every checkpoint load builds there, then
    assigns the stored tensors) its normal_() init would go through torch's reference ops, which
    import torch._dynamo: about a second of every load for a table that is overwritten."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))
    return nn.Embedding(rows, dim)
