"""What diffusers' stock attention hands to ``scaled_dot_product_attention``: the reference the families' guided
processors are checked against (tests/families)."""

import torch


class SDPASpy:
    """Records the q/k/v of every ``scaled_dot_product_attention`` call made inside one module (``calls``), while
    ``monkeypatch`` holds the spy in place."""

    def __init__(self, monkeypatch, module):
        real, self.calls, self.inside = torch.nn.functional.scaled_dot_product_attention, [], False

        def spy(*args, **kwargs):
            if self.inside:  # diffusers passes them by position (CogVideoX) or by name (Wan)
                qkv = [*args[:3], *(kwargs[n] for n in ("query", "key", "value") if n in kwargs)]
                self.calls.append(tuple(t.detach().clone() for t in qkv))
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        module.register_forward_pre_hook(lambda *a: setattr(self, "inside", True))
        module.register_forward_hook(lambda *a: setattr(self, "inside", False))
