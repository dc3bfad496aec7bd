"""Shared pytest set-up: CPU only, deterministic, few threads (the CI machine has 2 cores)."""
import os
import warnings

import pytest
import torch

torch.set_num_threads(2)
# detectron2's import-time uses of torch.jit.script are deprecated in recent torch: not ours to fix.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BCCD_ROOT = os.path.join(os.path.dirname(REPO_ROOT), "shared", "datasets", "BCCD", "BCCD")


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore:.*torch.jit.script.*:FutureWarning")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
