import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("torchaudio_logmel_golden.npz")


def pytest_addoption(parser):
    parser.addoption("--run-soak", action="store_true", help="run the full-length soak tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-soak"):
        return
    skip = pytest.mark.skip(reason="full-length soak: run with `make soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_config():
    from kws_export.config import CRNNConfig

    return CRNNConfig(channels=2, hidden=8, gru_layers=1)


@pytest.fixture(autouse=True)
def _single_thread(monkeypatch):
    # Two cores: keep test processes from oversubscribing them.
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global random state (torch, numpy, random): a test
    that draws with torch.randn or np.random.* sees the same numbers whichever tests ran
    before it, alone or in the whole suite."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))
