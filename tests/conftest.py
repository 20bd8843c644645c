"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for the module: the tiny models' small ops run far faster so on a
    shared 2-core machine than with two threads contending (about 30x here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
