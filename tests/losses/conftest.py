import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="session")
def golden():
    return dict(np.load(os.path.join(FIXTURES, "loss_golden.npz")))
