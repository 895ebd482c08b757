"""Fixtures shared by the test files."""
import secrets

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh random generator per test; its seed is printed (shown when the test fails) to replay it."""
    seed = secrets.randbits(32)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
