"""Key/value caches of a decoding GPT: one batch of equal-length rows (`KVCache`, generation) and rows of
independent lengths (`SlotKVCache`, serving).

Dimensions: B rows, nkv key/value heads, hs head size, T new positions.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the positions seen so far, preallocated as (B, nkv, max_len, hs) per layer.

    Every row holds the same positions: `pos` counts those already written; GPT.forward reads it as the
    offset of new tokens and advances it after the last layer.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_size: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = 0

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """Positions of the next T tokens, (T,); raises when they would pass the end."""
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {self.pos + T} were asked for")
        return torch.arange(self.pos, self.pos + T, device=device)

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nkv, T, hs) at the current position; return all keys and values (B, nkv, S, hs),
        the attention mask (None or (T, S)) and whether attention is causal."""
        start, end = self.pos, self.pos + k.size(2)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        T, mask = k.size(2), None
        if start > 0 and T > 1:
            # query i sits at position start + i and may see keys 0 .. start + i (one query: all keys)
            mask = torch.ones(T, end, dtype=torch.bool, device=k.device).tril(diagonal=start)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end], mask, start == 0

    def advance(self, T: int) -> None:
        self.pos += T


class SlotKVCache:
    """A KV cache whose rows hold sequences of different lengths, for serving many requests in one batch.

    `rows` slots of (nkv, max_len, hs) per layer; the first `active` are in use and each has its own
    `lengths[row]`. A request's prompt is run alone into a KVCache, then `load`ed into a free row; a
    decode step feeds one token per active row (B = active, T = 1). When a request leaves, `move` the
    last active row into its place so that the active rows stay 0 .. active - 1 (slices, no copies).
    """

    def __init__(self, n_layer: int, rows: int, n_kv_head: int, max_len: int, head_size: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (rows, n_kv_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len, self.active = max_len, 0
        self.lengths = [0] * rows  # host copy: no device sync to find the longest row
        self._pos = self._mask = None

    def load(self, row: int, cache: KVCache) -> None:
        """Copy a one-row KVCache (a prefilled prompt) into `row`."""
        n = cache.pos
        for layer in range(len(self.k)):
            self.k[layer][row, :, :n] = cache.k[layer][0, :, :n]
            self.v[layer][row, :, :n] = cache.v[layer][0, :, :n]
        self.lengths[row] = n

    def move(self, src: int, dst: int) -> None:
        if src != dst:
            n = self.lengths[src]
            for layer in range(len(self.k)):
                self.k[layer][dst, :, :n] = self.k[layer][src, :, :n]
                self.v[layer][dst, :, :n] = self.v[layer][src, :, :n]
            self.lengths[dst] = n

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """Each active row's next position, (B, 1); decode steps only (T = 1)."""
        lengths = self.lengths[:self.active]
        if T != 1 or max(lengths) >= self.max_len:
            raise ValueError(f"a slot cache feeds one token per row below {self.max_len} positions")
        self._pos = torch.tensor(lengths, device=device)  # (B,)
        S = max(lengths) + 1
        self._mask = (torch.arange(S, device=device) <= self._pos[:, None]).view(len(lengths), 1, 1, S)
        return self._pos[:, None]

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        B, S = self.active, self._mask.size(-1)
        rows = torch.arange(B, device=k.device)
        self.k[layer][rows, :, self._pos] = k[:, :, 0]  # (B, nkv, hs) at each row's own position
        self.v[layer][rows, :, self._pos] = v[:, :, 0]
        return self.k[layer][:B, :, :S], self.v[layer][:B, :, :S], self._mask, False

    def advance(self, T: int) -> None:
        for row in range(self.active):
            self.lengths[row] += T
