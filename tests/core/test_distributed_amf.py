"""The AMF over a gloo process group of 2 and 3 CPU ranks (torch.multiprocessing spawn): both shard
layouts, ragged shards, argmax and soft, the soft backward's local gradients, the distributed loss,
errors raised alike on every rank; all against single-process ``compute_amf``."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ditflow_fast import amf_loss, compute_amf
from ditflow_fast.distributed_amf import (
    _all_gather_ragged,
    amf_to_rows,
    distributed_amf,
    distributed_amf_loss,
    row_partition,
    rows_to_amf,
)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")

F, H_, W_ = 3, 2, 4  # N = 24 video tokens
N = F * H_ * W_
# ragged shards per world size: token counts (sequence) and head counts (heads)
TOKENS = {2: [7, 17], 3: [5, 13, 6]}
HEADS = {2: (5, [2, 3]), 3: (5, [1, 0, 4])}


def _data(heads, dtype, seed, text=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, text + N, 8, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(2, heads, text + N, 8, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(2, F, F, H_ * W_, 2, generator=g, dtype=torch.float64).to(torch.float32 if dtype != torch.float64
                                                                               else dtype)
    return q, k, w


def _check(rank, world):
    kw = dict(frames=F, height=H_, width=W_)
    for shard in ("sequence", "heads"):
        for dtype, tol in ((torch.float32, 2e-5), (torch.float64, 1e-10)):
            text = 3 if shard == "heads" else 0
            heads, hsplit = HEADS[world] if shard == "heads" else (3, None)
            q, k, w = _data(heads, dtype, seed=11, text=text)
            full_soft = compute_amf(q.clone().requires_grad_(), k, mode="soft", text_tokens=text, backend="torch", **kw)
            qf, kf = q.clone().requires_grad_(), k.clone().requires_grad_()
            (compute_amf(qf, kf, mode="soft", text_tokens=text, backend="torch", **kw) * w).sum().backward()
            full_arg = compute_amf(q, k, mode="argmax", text_tokens=text, backend="torch", **kw)
            if shard == "sequence":
                sizes = TOKENS[world]
                o = [sum(sizes[:r]) for r in range(world + 1)]
                sl = (slice(None), slice(None), slice(o[rank], o[rank + 1]))
                rows = slice(o[rank], o[rank + 1])
                ql, kl = q[sl].clone(), k[sl].clone()
            else:
                o = [sum(hsplit[:r]) for r in range(world + 1)]
                sl = (slice(None), slice(o[rank], o[rank + 1]))
                rows = slice(*row_partition(N, world)[rank])
                ql, kl = q[sl].clone(), k[sl].clone()
            ql.requires_grad_(), kl.requires_grad_()
            got = distributed_amf(ql, kl, shard=shard, mode="soft", text_tokens=text, **kw)
            want = amf_to_rows(full_soft.detach())[:, rows]
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
            (got * amf_to_rows(w)[:, rows]).sum().backward()  # each rank: the loss of its rows
            # a second derivative would silently drop the second-order term: refused, on every rank alike
            again = distributed_amf(ql, kl, shard=shard, mode="soft", text_tokens=text, **kw)
            (gq,) = torch.autograd.grad((again * amf_to_rows(w)[:, rows]).sum(), ql, create_graph=True)
            with pytest.raises(RuntimeError, match="double backward is not supported by backend 'distributed'"):
                (gq * gq).sum().backward()
            torch.testing.assert_close(ql.grad, qf.grad[sl], atol=tol * 10, rtol=tol * 10)
            torch.testing.assert_close(kl.grad, kf.grad[sl], atol=tol * 10, rtol=tol * 10)
            arg = distributed_amf(ql, kl, shard=shard, mode="argmax", text_tokens=text, **kw)
            assert torch.equal(arg, amf_to_rows(full_arg)[:, rows]) and not arg.requires_grad
            # all ranks' rows in order are compute_amf's output
            spans = [(o[r], o[r + 1]) for r in range(world)] if shard == "sequence" else row_partition(N, world)
            every = _all_gather_ragged(arg, [e - s for s, e in spans], 1, None)
            assert torch.equal(rows_to_amf(every, **kw), full_arg)
    # the distributed loss: summed over ranks, the single-process loss; gradients add up to its gradients
    q, k, _ = _data(3, torch.float64, seed=5)
    q2, k2, _ = _data(3, torch.float64, seed=6)  # the same on every rank
    ref = compute_amf(q2, k2, mode="argmax", **kw)
    ref[0, 0, 1] = 0  # some masked entries
    qf, kf = q.clone().requires_grad_(), k.clone().requires_grad_()
    single = amf_loss(compute_amf(qf, kf, mode="soft", backend="torch", **kw), ref)
    single.backward()
    sizes = TOKENS[world]
    o = [sum(sizes[:r]) for r in range(world + 1)]
    ql, kl = (t[:, :, o[rank]:o[rank + 1]].clone().requires_grad_() for t in (q, k))
    loss = distributed_amf_loss(distributed_amf(ql, kl, mode="soft", **kw), amf_to_rows(ref)[:, o[rank]:o[rank + 1]])
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    torch.testing.assert_close(total, single.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ql.grad, qf.grad[:, :, o[rank]:o[rank + 1]], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(kl.grad, kf.grad[:, :, o[rank]:o[rank + 1]], atol=1e-10, rtol=1e-9)
    # Wan's [B, T, H, d] layout, 3-D input
    q3, k3 = q[0].transpose(0, 1)[o[rank]:o[rank + 1]], k[0].transpose(0, 1)[o[rank]:o[rank + 1]]
    got = distributed_amf(q3, k3, layout="bthd", mode="argmax", **kw)
    assert torch.equal(got, amf_to_rows(compute_amf(q, k, mode="argmax", **kw))[0, o[rank]:o[rank + 1]])
    # a problem on one rank is raised on every rank (no rank is left waiting in a collective)
    bad = ql.detach().clone()
    if rank == world - 1:
        bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"rank {world - 1}: q or k holds NaN"):
        distributed_amf(bad, kl.detach(), mode="soft", **kw)
    with pytest.raises(ValueError, match="sum to"):
        distributed_amf(ql.detach()[:, :, :1], kl.detach()[:, :, :1], mode="soft", **kw)
    # scores that would overflow float32, from large q on rank 0 and large k on the last rank (neither rank's own
    # values would): refused on every rank, not NaN
    big_q, big_k = ql.detach().float().clone(), kl.detach().float().clone()
    if rank == 0:
        big_q *= 1e19
    if rank == world - 1:
        big_k *= 1e19
    with pytest.raises(ValueError, match="too large for float32 scores"):
        distributed_amf(big_q, big_k, mode="soft", **kw)
    # the geometry and temperature are checked as compute_amf checks them: no truncation, no bools
    for bad_kw, error in ((dict(frames=2.9), TypeError), (dict(temperature=True), TypeError),
                          (dict(temperature=10 ** 400), ValueError)):
        with pytest.raises(error):
            distributed_amf(ql.detach(), kl.detach(), mode="soft", **{**kw, **bad_kw})
    # under autocast: the forward and the backward of compute_amf's accumulation dtype (float32 here)
    q32, k32 = (t.detach().float().clone().requires_grad_() for t in (ql, kl))
    plain = distributed_amf(q32, k32, mode="soft", **kw)
    (plain * plain).sum().backward()
    grads = q32.grad.clone(), k32.grad.clone()
    q32.grad = k32.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = distributed_amf(q32, k32, mode="soft", **kw)
        (cast * cast).sum().backward()
    assert torch.equal(cast, plain) and torch.equal(q32.grad, grads[0]) and torch.equal(k32.grad, grads[1])


def _worker(rank, world, init, errors):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _check(rank, world)
    except BaseException as exc:
        import traceback

        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise exc
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_amf_matches_compute_amf(world, tmp_path):
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    try:
        mp.spawn(_worker, args=(world, f"file://{tmp_path / 'rendezvous'}", errors), nprocs=world, join=True)
    except mp.ProcessRaisedException:
        msgs = []
        while not errors.empty():
            msgs.append(errors.get())
        pytest.fail("\n".join(msgs) or "a rank failed")


def test_row_helpers():
    assert row_partition(7, 3) == [(0, 3), (3, 5), (5, 7)] and row_partition(2, 3) == [(0, 1), (1, 2), (2, 2)]
    amf = torch.randn(2, F, F, H_ * W_, 2)
    assert torch.equal(rows_to_amf(amf_to_rows(amf), frames=F, height=H_, width=W_), amf)
    with pytest.raises(ValueError, match="initialised"):
        distributed_amf(torch.randn(2, N, 4), torch.randn(2, N, 4), frames=F, height=H_, width=W_)
