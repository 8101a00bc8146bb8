"""Fixtures shared by the model tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """Small models: a second thread only adds synchronisation (and spins on a shared machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
