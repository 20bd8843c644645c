"""A latent edited between steps (DiTFlow's latent mode) survives Wan's UniPC sampler."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import UniPCMultistepScheduler  # noqa: E402

from ditflow_fast.families.wan.family import WanFamily  # noqa: E402

WAN_TOY = Path(__file__).resolve().parents[2] / "assets" / "tiny_wan"


def _two_steps(edit: torch.Tensor | None, tell: bool) -> torch.Tensor:
    """Two UniPC steps of a model that knows the clean sample ``x0`` (velocity ``(x - x0) / sigma``, so
    its ``x0`` estimate ignores the sample): whatever of the edit reaches the output came through the
    sample the sampler was handed."""
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sampler = WanFamily.make_sampler(sched, None)  # Wan's scheduler, as its folders configure it
    ts = sampler.set_timesteps(8, device="cpu")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 3, 5, 6, generator=g)
    x = torch.randn(x0.shape, generator=g)
    for i in range(2):
        sigma = float(sampler.sched.sigmas[i])
        x = sampler.step(i, ts[i], (x - x0) / sigma, x, None)
        if i == 0 and edit is not None:
            x = x + edit
            if tell:
                sampler.latent_edited()
    return x


def test_an_edit_survives_the_next_step_once_the_sampler_is_told():
    edit = 0.3 * torch.randn(1, 4, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    plain = _two_steps(None, False)
    told = _two_steps(edit, True)
    # the predictor steps from the edited latent: most of the edit is carried to the next sample
    assert (told - plain).norm() > 0.5 * edit.norm()


def test_untold_the_unipc_corrector_discards_the_edit():
    # why latent_edited exists: UniPC's corrector rebuilds the sample from its previous one, so the
    # edit would be lost (the guided Wan runs' AMF loss climbed back at every step)
    edit = 0.3 * torch.randn(1, 4, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    plain = _two_steps(None, False)
    untold = _two_steps(edit, False)
    assert (untold - plain).norm() < 1e-4 * edit.norm()


@pytest.mark.parametrize("row, calls", [("DiTFlow latent", 2), ("DiTFlow emb", 0)])
def test_the_loop_tells_the_sampler_after_each_latent_edit(monkeypatch, row, calls):
    from ditflow_fast.families.wan.sampler import WanSampler
    from ditflow_fast.toyworld.demo import ToyTransfer
    from ditflow_fast.toyworld.settings import DemoSettings
    from ditflow_fast.toyworld.world import FRAMES, reference_clips

    told = []
    monkeypatch.setattr(WanSampler, "latent_edited", lambda self: told.append(1))
    tt = ToyTransfer(WAN_TOY, DemoSettings(steps=4, guided_steps=2, opt_iters=1))
    ref = reference_clips(1, 1, frames=FRAMES)[0]
    tt.generate(ref, 0, row, seed=0)
    assert len(told) == calls
