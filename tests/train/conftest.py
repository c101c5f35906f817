import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="session")
def optim_golden():
    return dict(np.load(os.path.join(FIXTURES, "optim_golden.npz")))
