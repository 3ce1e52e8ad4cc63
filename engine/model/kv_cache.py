"""Static key/value cache: preallocated buffers, written at slots the caller names.

The cache keeps no "current length": the generation loop owns the slot index and passes it in, so
there is no hidden coupling between layers (every layer of a step writes the same slots).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch, num_kv_heads, max_len, head_dim)  # (B, K, S, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v float[B, K, T, D] at slots start..start+T-1; return views of slots 0..start+T-1."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished sequences from the batch so later steps spend nothing on them."""
        self.k = self.k.index_select(0, rows)
        self.v = self.v.index_select(0, rows)
