"""Fixtures of the command-line tests."""

import pytest


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a model gets loaded: the errors under test must come before that."""
    from ditflow_fast.families import CogVideoXFamily, WanFamily

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(CogVideoXFamily, "load", staticmethod(boom))
    monkeypatch.setattr(WanFamily, "load", staticmethod(boom))
