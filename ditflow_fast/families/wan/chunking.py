"""Token-sliced guided backward for Wan blocks: the block's tail (default) or its FFN alone, in token slices.

Wan's FFN (``block.ffn``: Linear ``D -> ffn_dim``, tanh-GELU, Linear ``ffn_dim -> D``) works token by
token, and at 720p its hidden layer is the largest tensor of a block (14B: ``N = 75,600`` tokens x
13,824 = 2.1 GB in bf16). In a guided iteration the checkpointed block being back-propagated is
recomputed whole, so its FFN keeps the GELU input ``[N, ffn_dim]`` for the backward and the backward
makes ``[N, ffn_dim]`` gradients next to it (the memory model's ``1.75 ffn``).

With ``scope="ffn"`` :func:`install` replaces ``block.ffn.forward`` (instance attribute; the module,
its parameters, names
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

The block's tail (``scope="tail"``, what :func:`install` does by default). Slicing the FFN alone leaves
the recomputed block peaking outside it: norm2, the cross-attention and norm3 save float32 copies and
SDPA tensors for all ``N`` tokens (``docs/memory.md``). Everything after the self-attention is per token
(the cross-attention's keys and values are the text's), so :class:`SlicedTail` runs the block's
forward as diffusers writes it up to the self-attention's output (modulations, norm1, ``attn1`` with its
output projection), then the rest -- the gated residual, norm2, ``attn2``, norm3, the FFN and its gated
residual -- in ``chunks`` token slices, each under its own non-reentrant checkpoint. It replaces the
innermost forward of the block: ``block.forward`` itself, or, where diffusers' hooks (group offloading)
already wrap it, the forward their innermost hook calls, so the hooks run around it unchanged. The
tail's arithmetic is a copy of ``WanTransformerBlock.forward``'s (diffusers 0.3x), with per-token
(TI2V) modulations sliced along the tokens; like the FFN slices it is bit-identical on the CPU.
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


class SlicedTail:
    """Stands in for a Wan block's innermost forward: the block's tail in ``chunks`` checkpointed
    token slices while gradients are recorded (module docstring), the stock forward otherwise."""

    def __init__(self, block, original, chunks: int):
        self.block, self.original, self.chunks = block, original, int(chunks)

    def __call__(self, hidden_states, encoder_hidden_states=None, temb=None, rotary_emb=None, *args, **kwargs):
        n = hidden_states.shape[1] if hidden_states.dim() == 3 else 0
        if self.chunks <= 1 or n < 2 or args or kwargs or temb is None or not torch.is_grad_enabled():
            return self.original(hidden_states, encoder_hidden_states, temb, rotary_emb, *args, **kwargs)
        from torch.utils.checkpoint import checkpoint

        blk = self.block
        per_token = temb.ndim == 4  # TI2V: [B, N, 6, D] modulations
        if per_token:
            mods = [m.squeeze(2) for m in (blk.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)]
        else:
            mods = list((blk.scale_shift_table + temb.float()).chunk(6, dim=1))
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mods
        # the self-attention over all tokens, as the stock forward
        normed = (blk.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = blk.attn1(normed, None, None, rotary_emb)
        size = -(-n // min(self.chunks, n))
        tails = [m.split(size, dim=1) if per_token else [m] * -(-n // size)
                 for m in (gate_msa, c_shift, c_scale, c_gate)]
        parts = [checkpoint(self._tail, h, a, encoder_hidden_states, *m, use_reentrant=False)
                 for h, a, *m in zip(hidden_states.split(size, dim=1), attn_output.split(size, dim=1), *tails,
                                     strict=True)]
        return torch.cat(parts, dim=1)

    def _tail(self, hidden_states, attn_output, encoder_hidden_states, gate_msa, c_shift, c_scale, c_gate):
        blk = self.block  # WanTransformerBlock.forward from its self-attention residual on
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)
        normed = blk.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + blk.attn2(normed, encoder_hidden_states, None, None)
        normed = (blk.norm3(hidden_states.float()) * (1 + c_scale) + c_shift).type_as(hidden_states)
        ff_output = blk.ffn(normed)
        return (hidden_states.float() + ff_output.float() * c_gate).type_as(hidden_states)


def _innermost(block):
    """(object, attribute) holding the forward a Wan block finally runs: the innermost diffusers hook's
    reference where hooks wrap the block, else the block's own ``forward``."""
    registry = getattr(block, "_diffusers_hook", None)
    order = list(getattr(registry, "_hook_order", []) or [])
    if order:
        ref = registry.hooks[order[0]].fn_ref  # the first registered hook wraps the stock forward
        return ref, "original_forward" if ref.original_forward is not None else "forward"
    return block, "forward"


def install(transformer, chunks: int, scope: str = "tail") -> int:
    """Slice the guided backward of every block of a Wan ``transformer`` into ``chunks`` token slices
    (module docstring): ``scope="tail"`` the block's tail (:class:`SlicedTail`), ``"ffn"`` the FFN only
    (:class:`ChunkedFFN`); ``chunks <= 1`` removes the slicing. Idempotent. Returns the slice count
    in effect."""
    if scope not in ("tail", "ffn"):
        raise ValueError(f"scope must be 'tail' or 'ffn', got {scope!r}")
    uninstall(transformer)
    chunks = int(chunks)
    if chunks <= 1:
        return 1
    for block in transformer.blocks:
        if scope == "ffn":
            ffn = block.ffn
            ffn._ditflow_ffn_saved = ffn.__dict__.get("forward")  # an instance forward (hooks) to restore, or None
            ffn.forward = ChunkedFFN(ffn.forward, chunks)
            continue
        owner, attr = _innermost(block)
        current = getattr(owner, attr)
        block._ditflow_tail_saved = (owner, attr, owner.__dict__.get(attr) if owner is block else current)
        setattr(owner, attr, SlicedTail(block, current, chunks))
    transformer._ditflow_ffn_chunks, transformer._ditflow_slice_scope = chunks, scope
    return chunks


def uninstall(transformer) -> None:
    """Undo :func:`install`: every ``block.ffn`` gets back the forward it had."""
    if getattr(transformer, "_ditflow_ffn_chunks", None) is None:
        return
    for block in transformer.blocks:
        saved = block.__dict__.pop("_ditflow_tail_saved", None)
        if saved is not None:
            owner, attr, before = saved
            if before is None:
                delattr(owner, attr)  # the block's own forward was the class's
            else:
                setattr(owner, attr, before)
        ffn = block.ffn
        if isinstance(ffn.__dict__.get("forward"), ChunkedFFN):
            saved = ffn.__dict__.pop("_ditflow_ffn_saved", None)
            if saved is None:
                del ffn.forward
            else:
                ffn.forward = saved
    del transformer._ditflow_ffn_chunks
    transformer.__dict__.pop("_ditflow_slice_scope", None)


def installed_chunks(transformer) -> int:
    """The slice count installed on ``transformer`` (1: none)."""
    return int(getattr(transformer, "_ditflow_ffn_chunks", None) or 1)
