"""Shared fixtures: one trained digits baseline per test session, tiny models."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(1)  # CI has 2 cores; keep test timings stable


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Trained baselines are cached per test session, never in the user's home."""
    path = os.environ.get("AUTOCOMPRESS_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    old = os.environ.get("AUTOCOMPRESS_CACHE")
    os.environ["AUTOCOMPRESS_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("AUTOCOMPRESS_CACHE", None)
    else:
        os.environ["AUTOCOMPRESS_CACHE"] = old


@pytest.fixture(scope="session")
def digits_task(_cache_dir):
    from autocompress.tasks import load_task

    return load_task("digits")


@pytest.fixture(scope="session")
def digits_mlp_task(_cache_dir):
    from autocompress.tasks import load_task

    return load_task("digits-mlp")
