"""The FastVMT-style windowed AMF loss (``flow_window``): with a window covering the frame and every frame pair it
is DiTFlow's ``flow`` loss (value and gradient), a partial window is the literal masked definition, and its
settings are checked and keyed only where they matter."""

from __future__ import annotations

import math

import pytest
import torch

from ditflow_fast import compute_amf
from ditflow_fast.guidance import losses
from ditflow_fast.guidance.config import GuidanceConfig

# (frames, h, w, heads, head_dim): awkward on purpose (a single row, a single column, odd everything)
SHAPES = [(3, 3, 5, 2, 7), (2, 1, 6, 3, 5), (4, 5, 1, 1, 3), (1, 2, 2, 4, 1), (3, 4, 4, 2, 8)]


def _qk(frames, h, w, heads, d, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, frames * h * w, d, generator=g) * scale
    k = torch.randn(1, heads, frames * h * w, d, generator=g) * scale
    return q, k


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("frames_limit", [None, "all"])
def test_a_window_covering_the_frame_is_the_flow_loss(shape, frames_limit):
    f, h, w, heads, d = shape
    q_ref, k_ref = _qk(*shape, seed=1)
    q, k = _qk(*shape, seed=2)
    q.requires_grad_(True)
    k.requires_grad_(True)
    window = 2 * max(h, w) - 1  # the smallest window that reaches every patch from every patch
    wf = None if frames_limit is None else f - 1
    kw = dict(frames=f, h=h, w=w, temperature=2.0)
    dense = losses.loss("flow", (q, k), losses.reference("flow", (q_ref, k_ref), frames=f, h=h, w=w), **kw)
    windowed = losses.loss("flow_window", (q, k), losses.reference("flow_window", (q_ref, k_ref), frames=f, h=h, w=w),
                           window=window, window_frames=wf, **kw)
    assert windowed.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-7)
    g_dense = torch.autograd.grad(dense, (q, k))
    g_win = torch.autograd.grad(windowed, (q, k))
    for a, b in zip(g_win, g_dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the AMF itself, both modes, is compute_amf's
    for mode in ("soft", "argmax"):
        ours = losses.window_amf(q_ref, k_ref, frames=f, h=h, w=w, window=window, window_frames=wf, mode=mode)
        theirs = compute_amf(q_ref, k_ref, frames=f, height=h, width=w, mode=mode)[0].reshape(f * f, h * w, 2)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _literal(q, k, frames, h, w, window, window_frames, temperature, mode):
    """The definition one query and one frame pair at a time, in float64."""
    d = q.shape[3]
    out = []
    r = window // 2
    for i in range(frames):
        for j in range(frames):
            if window_frames is not None and abs(i - j) > window_frames:
                continue
            disp = torch.zeros(h * w, 2, dtype=torch.float64)
            for m in range(h * w):
                mx, my = m % w, m // w
                keys = [n for n in range(h * w) if abs(n % w - mx) <= r and abs(n // w - my) <= r]
                qm = q[0, :, i * h * w + m].double()  # [H, d]
                s = torch.stack([(qm * k[0, :, j * h * w + n].double()).sum(-1).mean() / math.sqrt(d) for n in keys])
                pos = torch.tensor([[n % w, n // w] for n in keys], dtype=torch.float64)
                target = pos[int(s.argmax())] if mode == "argmax" else torch.softmax(temperature * s, 0) @ pos
                disp[m] = target - torch.tensor([mx, my], dtype=torch.float64)
            out.append(disp)
    return torch.stack(out)


@pytest.mark.parametrize("window,window_frames", [(3, 1), (1, 0), (3, None), (5, 2)])
def test_a_partial_window_is_the_literal_masked_definition(window, window_frames):
    f, h, w = 3, 4, 5
    q, k = _qk(f, h, w, 2, 3, seed=3)
    for mode in ("soft", "argmax"):
        ours = losses.window_amf(q, k, frames=f, h=h, w=w, window=window, window_frames=window_frames,
                                 temperature=1.5, mode=mode)
        lit = _literal(q, k, f, h, w, window, window_frames, 1.5, mode)
        assert ours.shape == lit.shape
        torch.testing.assert_close(ours.double(), lit, rtol=1e-5, atol=1e-5)
        assert ours.abs().max() <= window // 2 + 1e-6  # nothing reaches past the window


def test_a_small_window_changes_the_loss():
    """The window is not a no-op: where attention reaches far, masking it changes the loss."""
    f, h, w = 3, 6, 6
    q_ref, k_ref = _qk(f, h, w, 2, 4, seed=4)
    q, k = _qk(f, h, w, 2, 4, seed=5)
    target = losses.reference("flow_window", (q_ref, k_ref), frames=f, h=h, w=w)
    full = losses.loss("flow_window", (q, k), target, frames=f, h=h, w=w, window=11, window_frames=None)
    small = losses.loss("flow_window", (q, k), target, frames=f, h=h, w=w, window=3, window_frames=1)
    assert abs(full.item() - small.item()) > 1e-3


def test_window_arguments_and_config_are_checked():
    q, k = _qk(2, 2, 2, 1, 2, seed=6)
    for bad in (4, 0, -1, True, 2.5):
        with pytest.raises(ValueError, match="window"):
            losses.window_amf(q, k, frames=2, h=2, w=2, window=bad)
    with pytest.raises(ValueError, match="window_frames"):
        losses.window_amf(q, k, frames=2, h=2, w=2, window=3, window_frames=-1)
    with pytest.raises(ValueError, match=r"\[1, H, F\*h\*w, d\]"):
        losses.window_amf(q, k, frames=3, h=2, w=2, window=3)
    for field, bad in (("amf_window", 4), ("amf_window", 0), ("amf_window", True), ("amf_window_frames", -1)):
        with pytest.raises(ValueError, match=field):
            GuidanceConfig(loss="flow_window", **{field: bad}).validate()
    GuidanceConfig(loss="flow_window", amf_window=7, amf_window_frames=None).validate()
    assert losses.needs_qk("flow_window") and not losses.needs_qk("moft")


def test_the_window_enters_the_run_key_only_for_flow_window():
    flow = GuidanceConfig(loss="flow")
    assert flow.run_key() == GuidanceConfig(loss="flow", amf_window=9, amf_window_frames=None).run_key()
    win = GuidanceConfig(loss="flow_window")
    assert win.run_key() != GuidanceConfig(loss="flow_window", amf_window=9).run_key()
    assert win.run_key() != GuidanceConfig(loss="flow_window", amf_window_frames=None).run_key()
    assert losses.options(flow) == {} and losses.options(win) == {"window": 5, "window_frames": 3}
