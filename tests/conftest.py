import os

import pytest
import torch

# Two workers on two cores: one thread each keeps the machine from oversubscribing.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
