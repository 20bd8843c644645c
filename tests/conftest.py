"""Fixtures shared by several test modules; and ``tests/`` on the import path, so that the tests in
every folder (``core/``, ``gpu/``, ...) import the shared ``_amf_helpers`` the same way."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for the module: the tiny models' small ops run far faster so on a
    shared 2-core machine than with two threads contending (about 30x here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
