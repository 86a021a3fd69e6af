"""Shared fixtures: tiny diffusers models built in process and saved to temporary folders."""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# Never touch the user's real cache from tests.
os.environ["SIMA_CACHE_DIR"] = tempfile.mkdtemp(prefix="sima-test-cache-")
atexit.register(shutil.rmtree, os.environ["SIMA_CACHE_DIR"], True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tests.helpers import save_tiny_pixel_model, tiny_unet


@pytest.fixture
def tiny_unet_factory():
    return tiny_unet


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A pipeline-layout folder (unet/ + scheduler/) with a 3x8x8 epsilon-prediction model."""
    return save_tiny_pixel_model(tmp_path / "tiny-model")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
