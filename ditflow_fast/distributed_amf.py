"""The AMF over a ``torch.distributed`` process group, for sequence-parallel DiTs (docs/scale.md).

Each rank passes its local slice of ``q`` and ``k`` and gets the AMF of its query rows:

- ``shard="sequence"`` (ring attention's layout, diffusers' ``ring_degree``): rank ``r`` holds a
  contiguous slice of the video tokens, ``[B, H, n_r, d]`` (any ``n_r >= 0``, ragged allowed; the
  slices in rank order make up all ``N = F*h*w`` tokens). It gets the rows of its own tokens.
- ``shard="heads"`` (what Ulysses attention, diffusers' ``ulysses_degree``, leaves inside the
  attention after its all-to-all): rank ``r`` holds every token and ``H_r`` of the heads,
  ``[B, H_r, T, d]`` (ragged allowed, heads in rank order). It gets the rows
  ``row_partition(N, P)[r]`` (an even split of the tokens).

The result is ``[B, n_r, F, 2]``: for each of the rank's query tokens ``m`` (global index
``o_r + i``, frame ``m // (h*w)``, patch ``m % (h*w)``) and each target frame ``j``, the displacement
``compute_amf`` gives at ``out[b, m // hw, j, m % hw]``; :func:`rows_to_amf` turns the rows of all
ranks, concatenated in rank order, into that ``[B, F, F, h*w, 2]``. Same definition, same
accumulation (float32, float64 for float64 input) as :func:`ditflow_fast.compute_amf`.

The soft mode is differentiable: every rank calls ``backward`` on a loss of its own rows (all ranks
must, the backward is collective) and gets the gradients of its own local ``q`` and ``k``; summed
over ranks they are the single-process gradients of the sum of the ranks' losses
(:func:`distributed_amf_loss` is DiTFlow's masked MSE over all ranks' rows).

Communication and memory per rank: the keys of all tokens are gathered once (``[B, N, H*d]`` in the
compute dtype: the gathered operand, kept for the backward); besides it a rank holds only O(N/P)
tensors (its query rows, the outputs and log-sum-exp ``[B, n_r, F]``, in heads mode its rows of
``q`` from the other ranks) and a score chunk bounded by ``budget_bytes``, not growing with N. The
backward visits the keys slice by slice: the contributions of its rows to slice ``c``'s key
gradients are reduced onto rank ``c`` (``dist.reduce``), so no rank holds a full-size key gradient.
Collectives: ``all_gather`` (metadata and keys), ``reduce``, and point-to-point ``isend``/``irecv``
for the heads layout's ragged exchanges: all supported by gloo (CPU) and NCCL.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ._problem import check_scalars, check_score_range, finite_max, no_autocast
from .dispatch import once_differentiable
from .geometry import patch_coords

DEFAULT_BUDGET_BYTES = 64 << 20
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def row_partition(n: int, world: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` per rank: an even split of ``n`` rows, the first ``n % world`` one longer."""
    base, extra = divmod(n, world)
    out, start = [], 0
    for r in range(world):
        stop = start + base + (r < extra)
        out.append((start, stop))
        start = stop
    return out


def rows_to_amf(rows: torch.Tensor, *, frames: int, height: int, width: int) -> torch.Tensor:
    """``[B, N, F, 2]`` rows of all ranks in order -> ``compute_amf``'s ``[B, F, F, h*w, 2]``."""
    b = rows.shape[0]
    return rows.reshape(b, frames, height * width, frames, 2).permute(0, 1, 3, 2, 4)


def amf_to_rows(amf: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rows_to_amf`: ``[B, F, F, h*w, 2]`` -> ``[B, N, F, 2]``."""
    b, f, _, hw, _ = amf.shape
    return amf.permute(0, 1, 3, 2, 4).reshape(b, f * hw, f, 2)


# -- communication helpers -----------------------------------------------------------------------
def _global(group, r: int) -> int:
    return r if group is None else dist.get_global_rank(group, r)


def _all_gather_ragged(t: torch.Tensor, sizes: list[int], dim: int, group) -> torch.Tensor:
    """Concatenation along ``dim`` of every rank's ``t`` (sizes along ``dim`` may differ)."""
    m = max(sizes)
    if t.shape[dim] < m:
        pad = list(t.shape)
        pad[dim] = m - t.shape[dim]
        t = torch.cat([t, t.new_zeros(pad)], dim=dim)
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes, strict=True)], dim=dim)


def _exchange(sends: list[torch.Tensor], recv_shapes: list[tuple], group, rank: int, like: torch.Tensor):
    """A ragged all-to-all: ``sends[j]`` goes to rank ``j``; returns what each rank sent here."""
    recvs, reqs = [], []
    for j, shape in enumerate(recv_shapes):
        if j == rank:
            recvs.append(sends[j].contiguous().clone())
            continue
        buf = like.new_empty(shape)
        recvs.append(buf)
        if buf.numel():
            reqs.append(dist.irecv(buf, src=_global(group, j), group=group))
    for j, t in enumerate(sends):
        if j != rank and t.numel():
            reqs.append(dist.isend(t.contiguous(), dst=_global(group, j), group=group))
    for r in reqs:
        r.wait()
    return recvs


# -- the row kernel ------------------------------------------------------------------------------
class _Geo:
    def __init__(self, frames, height, width, heads, head_dim, temperature, soft, budget, cdtype, device):
        self.frames, self.height, self.width = frames, height, width
        self.hw, self.n = height * width, frames * height * width
        self.alpha = temperature / (heads * math.sqrt(head_dim))
        self.soft = soft
        elem = 8 if cdtype == torch.float64 else 4
        self.rows = max(1, budget // (3 * max(self.n, 1) * elem))
        self.pos = patch_coords(height, width, device=device, dtype=cdtype)


def _rows_forward(g: _Geo, qc: torch.Tensor, kc: torch.Tensor, offset: int):
    """``qc`` ``[B, n_r, Hd]`` rows starting at token ``offset`` against all keys ``kc`` ``[B, N, Hd]``:
    targets ``[B, n_r, F, 2]`` and (soft) the log-sum-exp ``[B, n_r, F]``."""
    b, n_r, _ = qc.shape
    target = qc.new_empty(b, n_r, g.frames, 2)
    lse = qc.new_empty(b, n_r, g.frames) if g.soft else None
    for bi in range(b):
        kt = kc[bi].t()
        for r0 in range(0, n_r, g.rows):
            r1 = min(n_r, r0 + g.rows)
            if g.soft:
                z = (qc[bi, r0:r1] * g.alpha).matmul(kt).view(r1 - r0, g.frames, g.hw)
                zmax = z.amax(dim=-1, keepdim=True)
                e = z.sub_(zmax).exp_()
                norm = e.sum(dim=-1)
                target[bi, r0:r1] = (e @ g.pos) / norm.unsqueeze(-1)
                lse[bi, r0:r1] = zmax.squeeze(-1) + norm.log()
            else:
                s = qc[bi, r0:r1].matmul(kt).view(r1 - r0, g.frames, g.hw)
                target[bi, r0:r1] = g.pos[s.argmax(dim=-1)]  # first maximum wins ties
    own = g.pos[torch.arange(offset, offset + n_r, device=qc.device) % g.hw]
    return target, lse, own


def _rows_backward(g: _Geo, qc, kc, target, lse, grad, slices, group, rank, want_k: bool):
    """``dqc`` ``[B, n_r, Hd]`` of the rows, and the key gradient of this rank's own key slice
    (``slices[rank]``), reduced over every rank's rows; one key slice at a time."""
    b, n_r, _ = qc.shape
    dqc = torch.zeros_like(qc)
    dk_own = None
    g_dot_o = (grad * target).sum(dim=-1)  # [B, n_r, F]
    for c, (k0, k1) in enumerate(slices):
        if k1 == k0:  # a rank without tokens: nothing to reduce (every rank skips it alike)
            if c == rank:
                dk_own = qc.new_zeros(b, 0, qc.shape[-1])
            continue
        idx = torch.arange(k0, k1, device=qc.device)
        kf, kp = idx // g.hw, idx % g.hw  # frame and patch of each key of the slice
        kpos = g.pos[kp]  # [n_c, 2]
        dk = qc.new_zeros(b, k1 - k0, qc.shape[-1]) if want_k else None
        for bi in range(b):
            ks = kc[bi, k0:k1]
            for r0 in range(0, n_r, g.rows):
                r1 = min(n_r, r0 + g.rows)
                z = (qc[bi, r0:r1] * g.alpha).matmul(ks.t())  # [R, n_c]
                prob = z.sub_(lse[bi, r0:r1][:, kf]).exp_()
                gb = grad[bi, r0:r1][:, kf]  # [R, n_c, 2]: the gradient of each key's target frame
                gpos = (gb * kpos).sum(dim=-1)
                dz = prob.mul_(gpos.sub_(g_dot_o[bi, r0:r1][:, kf]))
                dqc[bi, r0:r1].addmm_(dz, ks, alpha=g.alpha)
                if want_k:
                    dk[bi].addmm_(dz.t(), qc[bi, r0:r1], alpha=g.alpha)
        if want_k:
            dist.reduce(dk, dst=_global(group, c), op=dist.ReduceOp.SUM, group=group)
            if c == rank:
                dk_own = dk
    return dqc, dk_own


def _cat_heads(t: torch.Tensor, dtype) -> torch.Tensor:
    """``[B, H, n, d]`` -> ``[B, n, H*d]`` in ``dtype``."""
    b, h, n, d = t.shape
    return t.permute(0, 2, 1, 3).to(dtype).reshape(b, n, h * d)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, n, H*d]`` -> ``[B, H, n, d]``."""
    b, n, hd = t.shape
    return t.reshape(b, n, heads, hd // heads).permute(0, 2, 1, 3)


class _SeqAMF(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, q, k, g: _Geo, sizes, group, rank):
        cdtype = g.pos.dtype
        qc = _cat_heads(q, cdtype)
        kc = _all_gather_ragged(_cat_heads(k, cdtype), sizes, 1, group)
        offsets = [sum(sizes[:r]) for r in range(len(sizes))]
        target, lse, own = _rows_forward(g, qc, kc, offsets[rank])
        ctx.save_for_backward(qc, kc, target, lse, q, k)  # q, k: tie a double backward's refusal to them
        ctx.meta = (g, [(o, o + s) for o, s in zip(offsets, sizes, strict=True)], group, rank, q.shape, q.dtype)
        return target - own[None, :, None, :]

    @staticmethod
    @once_differentiable("distributed")
    @no_autocast
    def backward(ctx, grad):
        qc, kc, target, lse = ctx.saved_tensors[:4]
        g, slices, group, rank, shape, dtype = ctx.meta
        dqc, dkc = _rows_backward(g, qc, kc, target, lse, grad.to(qc.dtype), slices, group, rank, want_k=True)
        heads = shape[1]
        return (_split_heads(dqc, heads).to(dtype), _split_heads(dkc, heads).to(dtype), None, None, None, None)


class _HeadsAMF(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, q, k, g: _Geo, heads, group, rank):
        cdtype = g.pos.dtype
        b, h_r, n, d = q.shape
        world = len(heads)
        slices = row_partition(n, world)
        # all keys, all heads: the gathered operand
        kc = _cat_heads(_all_gather_ragged(k.to(cdtype), heads, 1, group), cdtype)
        # this rank's rows with every rank's heads
        r0, r1 = slices[rank]
        sends = [q[:, :, a:z].to(cdtype) for a, z in slices]
        parts = _exchange(sends, [(b, heads[j], r1 - r0, d) for j in range(world)], group, rank, kc)
        qc = _cat_heads(torch.cat(parts, dim=1), cdtype)
        target, lse, own = _rows_forward(g, qc, kc, r0)
        ctx.save_for_backward(qc, kc, target, lse, q, k)  # q, k: tie a double backward's refusal to them
        ctx.meta = (g, slices, heads, group, rank, q.shape, q.dtype)
        return target - own[None, :, None, :]

    @staticmethod
    @once_differentiable("distributed")
    @no_autocast
    def backward(ctx, grad):
        qc, kc, target, lse = ctx.saved_tensors[:4]
        g, slices, heads, group, rank, shape, dtype = ctx.meta
        b, h_r, n, d = shape
        dqc, dkc = _rows_backward(g, qc, kc, target, lse, grad.to(qc.dtype), slices, group, rank, want_k=True)
        bounds = [sum(heads[:j]) for j in range(len(heads) + 1)]
        out = []
        for rows in (dqc, dkc):  # this rank's token slice, all heads -> every rank's heads, all tokens
            full = _split_heads(rows, bounds[-1])  # [B, H, n_r, d]
            sends = [full[:, bounds[j]:bounds[j + 1]] for j in range(len(heads))]
            parts = _exchange(sends, [(b, h_r, z - a, d) for a, z in slices], group, rank, rows)
            out.append(torch.cat(parts, dim=2).to(dtype))
        return out[0], out[1], None, None, None, None


def _agree(group, q: torch.Tensor, k: torch.Tensor, shard: str, text_tokens: int, world: int):
    """Every rank's shapes and dtypes, gathered, with a finiteness flag, and the largest ``|q|``, ``|k|`` of all
    ranks (for the range check), so that every rank raises the same error."""
    qmax, kmax = finite_max(q), finite_max(k)
    ok = not (math.isnan(qmax) or math.isnan(kmax))
    same = q.shape == k.shape and q.dtype == k.dtype and q.device == k.device
    info = torch.tensor([q.shape[0], q.shape[1], q.shape[2], q.shape[3], _DTYPES.get(q.dtype, -1), int(ok),
                         int(same)], dtype=torch.int64, device=q.device)
    parts = [torch.empty_like(info) for _ in range(world)]
    dist.all_gather(parts, info, group=group)
    peaks = torch.tensor([qmax if ok else 0.0, kmax if ok else 0.0], dtype=torch.float64, device=q.device)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=group)
    return [p.tolist() for p in parts], float(peaks[0]), float(peaks[1])


def distributed_amf(q, k, *, frames, height, width, group=None, shard="sequence", temperature=2.0, mode="soft",
                    text_tokens=0, layout="bhtd", budget_bytes=DEFAULT_BUDGET_BYTES):
    """This rank's rows of the AMF, ``[B, n_r, F, 2]`` (``[n_r, F, 2]`` for 3-D input); see the module
    docstring. ``q``, ``k``: the local slices, ``[B, H, n_r, d]`` (``shard="sequence"``) or
    ``[B, H_r, T, d]`` (``shard="heads"``; ``T = text_tokens + F*h*w``, the text stripped here);
    ``layout="bthd"`` for ``[B, T, H, d]`` (Wan's). ``mode``: ``"soft"`` (differentiable) or
    ``"argmax"``. Every rank must call it with the same ``frames``, ``height``, ``width``, ``shard``,
    ``mode`` and ``temperature``; a problem on any rank raises the same ``ValueError`` on all ranks."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("distributed_amf needs an initialised torch.distributed process group")
    if shard not in ("sequence", "heads"):
        raise ValueError(f"shard must be 'sequence' or 'heads', got {shard!r}")
    if mode not in ("soft", "argmax"):
        raise ValueError(f"mode must be 'soft' or 'argmax', got {mode!r}")
    if layout not in ("bhtd", "bthd"):
        raise ValueError(f"layout must be 'bhtd' or 'bthd', got {layout!r}")
    frames, height, width, text_tokens, temperature = check_scalars(frames, height, width, text_tokens, temperature)
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() not in (3, 4):
        raise ValueError("q and k must be tensors of 3 or 4 dimensions")
    squeeze = q.dim() == 3
    if squeeze:
        q, k = q.unsqueeze(0), k.unsqueeze(0)
    if layout == "bthd":
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    n = frames * height * width
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    infos, qmax, kmax = _agree(group, q, k, shard, text_tokens, world)
    problems = []
    for r, (b, _h, _t, d, dt, ok, same) in enumerate(infos):
        if not same:
            problems.append(f"rank {r}: q and k differ in shape, dtype or device")
        if dt < 0:
            problems.append(f"rank {r}: dtype must be float32, float16, bfloat16 or float64")
        if not ok:
            problems.append(f"rank {r}: q or k holds NaN or inf")
        if (b, d, dt) != tuple(infos[0][i] for i in (0, 3, 4)):
            problems.append(f"rank {r}: batch, head_dim or dtype differ from rank 0's")
    if shard == "sequence":
        if text_tokens:
            problems.append("shard='sequence' takes video tokens only: strip the text tokens first")
        if any(i[1] != infos[0][1] for i in infos):
            problems.append("shard='sequence': every rank must hold all heads (same H)")
        if sum(i[2] for i in infos) != n:
            problems.append(f"shard='sequence': the ranks' tokens ({[i[2] for i in infos]}) sum to "
                            f"{sum(i[2] for i in infos)}, not F*h*w = {n}")
    else:
        if any(i[2] != text_tokens + n for i in infos):
            problems.append(f"shard='heads': every rank must hold all T = {text_tokens + n} tokens, got "
                            f"{[i[2] for i in infos]}")
        if sum(i[1] for i in infos) < 1:
            problems.append("shard='heads': no heads")
    heads_total = infos[0][1] if shard == "sequence" else sum(i[1] for i in infos)
    if not problems:  # the global max|q|, max|k|: every rank refuses the same overflowing scores
        try:
            check_score_range(q.dtype, heads_total, q.shape[3], temperature, mode, qmax, kmax)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("distributed_amf: " + "; ".join(problems))
    cdtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = _Geo(frames, height, width, heads_total, q.shape[3], float(temperature), mode == "soft", int(budget_bytes),
             cdtype, q.device)
    if shard == "heads" and text_tokens:
        q, k = q[:, :, text_tokens:], k[:, :, text_tokens:]
    fn = _SeqAMF if shard == "sequence" else _HeadsAMF
    arg = [i[2] for i in infos] if shard == "sequence" else [i[1] for i in infos]
    if mode == "soft":
        out = fn.apply(q, k, g, arg, group, rank)
    else:
        with torch.no_grad():
            out = fn.apply(q.detach(), k.detach(), g, arg, group, rank)
    return out[0] if squeeze else out


def distributed_amf_loss(gen_rows: torch.Tensor, ref_rows: torch.Tensor, *, group=None,
                         threshold: bool = True) -> torch.Tensor:
    """DiTFlow's masked MSE (:func:`ditflow_fast.amf_loss`) over the rows of all ranks: this rank's
    squared errors over the global count. Summed over ranks it is the single-process loss; each
    rank's backward of its value gives its share of the gradients."""
    ref = ref_rows.detach().to(gen_rows.dtype)
    sq = (gen_rows - ref).square()
    if threshold:
        mask = (ref != 0).any(dim=-1, keepdim=True).to(gen_rows.dtype)
        local, count = (sq * mask).sum(), mask.sum() * 2
    else:
        local, count = sq.sum(), torch.tensor(float(sq.numel()), dtype=gen_rows.dtype, device=gen_rows.device)
    count = count.detach().clone()
    dist.all_reduce(count, group=group)
    return local / count.clamp_min(1)
