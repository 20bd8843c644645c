"""One geometry type (``ditflow_fast.geometry.AMFGeometry``) for the benchmark presets, the cases and a
validated call's ``AMFProblem``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ditflow_fast import compute_amf, dispatch
from ditflow_fast.bench.presets import PRESETS, get_preset
from ditflow_fast.bench.spec import CaseSpec, make_inputs, upstream_grad
from ditflow_fast.geometry import AMFGeometry


def test_derived_quantities():
    g = AMFGeometry(heads=4, head_dim=16, frames=2, height=5, width=7, text_tokens=3)
    assert (g.batch, g.patches, g.tokens, g.sequence, g.concat_dim) == (1, 35, 70, 73, 64)
    assert g.qk_shape == (1, 4, 73, 16) and g.out_shape == (1, 2, 2, 35, 2)
    assert g.logit_scale == pytest.approx(1 / (4 * math.sqrt(16)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.frames = 3
    with pytest.raises(ValueError, match="frames must be >= 1"):
        AMFGeometry(heads=4, head_dim=16, frames=0, height=5, width=7)
    with pytest.raises(ValueError, match="text_tokens must be >= 0"):
        AMFGeometry(heads=4, head_dim=16, frames=1, height=5, width=7, text_tokens=-1)


def test_presets_hold_one_geometry():
    for name, p in PRESETS.items():
        g = p.geometry
        assert isinstance(g, AMFGeometry) and g.batch == 1
        assert (p.heads, p.head_dim, p.frames, p.tokens, p.patches) == (g.heads, g.head_dim, g.frames, g.tokens,
                                                                        g.patches)
        d = p.as_dict()
        assert d == {"name": name, "heads": g.heads, "head_dim": g.head_dim, "frames": g.frames, "height": g.height,
                     "width": g.width, "text_tokens": g.text_tokens, "summary": p.summary, "tokens": g.tokens}
    with pytest.raises(AttributeError):
        get_preset("smoke").no_such_size  # noqa: B018


def test_cases_and_problems_share_the_preset_geometry(monkeypatch):
    spec = CaseSpec("torch", "soft", "smoke")
    g = spec.geometry
    assert g == get_preset("smoke").geometry
    small = spec.reduced(1, 2, 3).geometry
    assert small == dataclasses.replace(g, frames=1, height=2, width=3) and small.heads == g.heads
    q, k = make_inputs(spec)
    assert tuple(q.shape) == g.qk_shape and tuple(upstream_grad(spec, "cpu").shape) == g.out_shape

    seen = []

    def run(problem):
        seen.append(problem.geometry)
        return dispatch.backends()["torch"].run(problem)

    monkeypatch.setitem(dispatch._REGISTRY, "geometry-probe", dispatch.Backend(
        name="geometry-probe", summary="records the problem's geometry (test)", run=run, devices=("cpu",),
        dtypes=(torch.float32,)))
    out = compute_amf(q, k, frames=g.frames, height=g.height, width=g.width, text_tokens=g.text_tokens,
                      backend="geometry-probe")
    assert seen == [g] and tuple(out.shape) == g.out_shape
    compute_amf(q[0], k[0], frames=g.frames, height=g.height, width=g.width, text_tokens=g.text_tokens,
                backend="geometry-probe")
    assert seen[-1] == g  # [H, T, d] input: a batch of one
