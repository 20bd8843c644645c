"""Token-chunked feed-forward for Wan blocks: the guided backward holds ``[chunk, ffn_dim]``, not ``[N, ffn_dim]``.

Wan's FFN (``block.ffn``: Linear ``D -> ffn_dim``, tanh-GELU, Linear ``ffn_dim -> D``) works token by
token, and at 720p its hidden layer is the largest tensor of a block (14B: ``N = 75,600`` tokens x
13,824 = 2.1 GB in bf16). In a guided iteration the checkpointed block being back-propagated is
recomputed whole, so its FFN keeps the GELU input ``[N, ffn_dim]`` for the backward and the backward
makes ``[N, ffn_dim]`` gradients next to it (the memory model's ``1.75 ffn``).

:func:`install` replaces ``block.ffn.forward`` (instance attribute; the module, its parameters, names
and hooks stay as they are) by :class:`ChunkedFFN`: while gradients are recorded, the input is split
into ``chunks`` token slices, each slice runs the stock forward under its own non-reentrant
``torch.utils.checkpoint`` (nested inside diffusers' per-block checkpoint), and the outputs are
concatenated. Only the slices' inputs are saved; each slice's FFN is recomputed and back-propagated
on its own, so at most one ``[chunk, ffn_dim]`` hidden layer (and its gradient) is alive. Without
gradients (the denoising forwards, reference captures) the stock forward runs unchanged.

Exactness: the FFN is per token, so the output is the same tensor element for element (on the CPU
bit-identical, tested in fp32 and bf16); the gradient likewise (tested to be equal, and to 1e-6 in
the loop's loss). On a GPU, cuBLAS may pick another GEMM algorithm for the slices' shape than for
the whole, which can change the last bit of a product; nothing else changes.

``chunks``: :func:`resolve_chunks` (``None``: automatic, :func:`auto_chunks`: enough slices that one
``[chunk, ffn_dim]`` tensor has at most :data:`CHUNK_ELEMS` elements; 0 or 1: off).
"""

from __future__ import annotations

import torch

# Automatic chunking: at most this many elements in one [chunk, ffn_dim] tensor (256 MiB in bf16).
# Wan2.1-14B at 81 x 720 x 1280 (N = 75,600, ffn 13,824): 8 slices; 1.3B at 480p (32,760 x 8,960): 3;
# the tiny test models: 1 (off).
CHUNK_ELEMS = 2 ** 27


def auto_chunks(n_tokens: int, ffn_dim: int, limit: int = CHUNK_ELEMS) -> int:
    """Slices for ``n_tokens`` so that one ``[chunk, ffn_dim]`` tensor holds at most ``limit`` elements."""
    return max(1, -(-int(n_tokens) * int(ffn_dim) // int(limit)))


def resolve_chunks(ffn_chunks: int | None, n_tokens: int, ffn_dim: int) -> int:
    """The slice count a run uses: ``None`` automatic (:func:`auto_chunks`), 0 or 1 off, else as given
    (never more slices than tokens)."""
    if ffn_chunks is None:
        return min(auto_chunks(n_tokens, ffn_dim), max(1, int(n_tokens)))
    if int(ffn_chunks) < 0:
        raise ValueError(f"ffn_chunks must be >= 0 (0 or 1: off), got {ffn_chunks}")
    return max(1, min(int(ffn_chunks), max(1, int(n_tokens))))


class ChunkedFFN:
    """Stands in for ``ffn.forward``: the stock forward in ``chunks`` checkpointed token slices while
    gradients are recorded (module docstring), the stock forward itself otherwise."""

    def __init__(self, original, chunks: int):
        self.original, self.chunks = original, int(chunks)

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        n = hidden_states.shape[-2] if hidden_states.dim() >= 2 else 0
        if self.chunks <= 1 or n < 2 or args or kwargs or not torch.is_grad_enabled():
            return self.original(hidden_states, *args, **kwargs)
        from torch.utils.checkpoint import checkpoint

        size = -(-n // min(self.chunks, n))
        parts = [checkpoint(self.original, part, use_reentrant=False)
                 for part in hidden_states.split(size, dim=-2)]
        return torch.cat(parts, dim=-2)


def install(transformer, chunks: int) -> int:
    """Chunk the FFN of every block of a Wan ``transformer`` into ``chunks`` token slices (module
    docstring); ``chunks <= 1`` removes the chunking. Idempotent. Returns the slice count in effect."""
    uninstall(transformer)
    chunks = int(chunks)
    if chunks <= 1:
        return 1
    for block in transformer.blocks:
        ffn = block.ffn
        ffn._ditflow_ffn_saved = ffn.__dict__.get("forward")  # an instance forward (hooks) to restore, or None
        ffn.forward = ChunkedFFN(ffn.forward, chunks)
    transformer._ditflow_ffn_chunks = chunks
    return chunks


def uninstall(transformer) -> None:
    """Undo :func:`install`: every ``block.ffn`` gets back the forward it had."""
    if getattr(transformer, "_ditflow_ffn_chunks", None) is None:
        return
    for block in transformer.blocks:
        ffn = block.ffn
        if isinstance(ffn.__dict__.get("forward"), ChunkedFFN):
            saved = ffn.__dict__.pop("_ditflow_ffn_saved", None)
            if saved is None:
                del ffn.forward
            else:
                ffn.forward = saved
    del transformer._ditflow_ffn_chunks


def installed_chunks(transformer) -> int:
    """The slice count installed on ``transformer`` (1: none)."""
    return int(getattr(transformer, "_ditflow_ffn_chunks", None) or 1)
