"""The photo demo's data (core.photos): read from a file beside the project, never shipped.

Most tests build a small synthetic stand-in for cifar10_train_12k.npz; the ones about the real
file and the trained demo need ../shared/data/cifar10 and skip, saying so, where it is absent.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from core import DataError, datasets, load_model, photos
from core import train as training
from core.attacks import SimA
from core.audit import run_audit
from core.errors import SimaError
from core.models.registry import DEMO_DIR

DEMO = "cifar10-ddpm-memorising"
REAL = photos.DEFAULT_FILE
needs_real_data = pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is absent (a clone without ../shared)")


def fake_photos(path, n=40, seed=0):
    """A file in the real one's layout: uint8 (n, 32, 32, 3) and each row's CIFAR-10 index."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    index = rng.permutation(50_000)[:n]
    np.savez(path, x=x, y=rng.integers(0, 10, n), source_index=index)
    return x, index


@pytest.fixture
def fake_file(tmp_path, monkeypatch):
    path = tmp_path / "photos.npz"
    x, index = fake_photos(path)
    monkeypatch.setenv(photos.FILE_ENV, str(path))
    return x, index


def test_a_split_is_seeded_disjoint_and_named_by_cifar_index(fake_file):
    x, index = fake_file
    split = photos.photos_split(8, n_heldout=10, seed=3)
    assert split == photos.photos_split(8, n_heldout=10, seed=3)
    assert not set(split.member_ids) & set(split.heldout_ids)
    assert len(split.member_ids) == 8 and len(split.heldout_ids) == 10
    # the held-out rows are the permutation's first ones, as in the digits demos
    order = np.random.default_rng(3).permutation(len(x))
    assert set(split.heldout_ids) == {photos.photo_id(index[i]) for i in order[:10]}
    row = int(np.flatnonzero(index == int(split.member_ids[0].rsplit("-", 1)[1]))[0])
    expected = torch.from_numpy(x[row]).permute(2, 0, 1).to(torch.float32) / 255 * 2 - 1
    assert torch.allclose(photos.photos_by_ids(split.member_ids[:1])[0], expected, atol=1e-6)


def test_a_missing_file_is_one_line_that_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(photos.FILE_ENV, str(tmp_path / "nowhere.npz"))
    manifest = {"dataset": photos.photos_record(32, 1, 1, 0), "member_ids": ["cifar10-train-1"]}
    with pytest.raises(DataError) as caught:
        datasets.split_images(manifest, "members")
    message = str(caught.value)
    assert "\n" not in message and "nowhere.npz" in message and photos.FILE_ENV in message and "not shipped" in message


def test_a_wrong_file_or_size_or_id_is_refused(tmp_path, monkeypatch, fake_file):
    with pytest.raises(DataError, match="size 32"):
        photos.photos_by_ids(["cifar10-train-1"], 16)
    with pytest.raises(DataError, match="not in"):
        photos.photos_by_ids(["digits-0001"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 16, 16), np.uint8), source_index=np.arange(3))
    monkeypatch.setenv(photos.FILE_ENV, str(bad))
    with pytest.raises(DataError, match=r"uint8 \(N, 32, 32, 3\)"):
        photos.photos_split(1, n_heldout=1, seed=0)


def test_training_on_photos_makes_a_colour_pixel_model_whose_demo_sets_come_from_the_file(tmp_path, fake_file):
    config = {"kind": "pixel", "data": {"dataset": photos.DATASET, "size": 32, "members": 12, "heldout": 12},
              "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                       "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2},
              "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1},
              "check": {"timesteps": [0, 50], "seed": 0}, "threads": 1}
    out = training.train(config, tmp_path / "photo-model", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == photos.DATASET and manifest["dataset"]["channels"] == 3
    model = load_model(str(out))
    assert model.image_shape == (3, 32, 32)
    members, member_ids, heldout, heldout_ids = datasets.demo_sets(model)
    assert member_ids == manifest["member_ids"] and torch.equal(members, photos.photos_by_ids(member_ids))
    assert len(heldout) == 12 and manifest["check"]["t"] in (0, 50)


def test_photos_train_pixel_models_only():
    with pytest.raises(SimaError, match="pixel models only"):
        training.resolve_config({"kind": "latent", "data": {"dataset": photos.DATASET, "size": 32}})
    with pytest.raises(SimaError, match="data.dataset must be one of"):
        training.resolve_config({"data": {"dataset": "imagenet"}})


@needs_real_data
def test_the_photo_demo_loads_offline_small_and_reproduces_its_recorded_audit():
    manifest = json.loads((DEMO_DIR / DEMO / "manifest.json").read_text())
    assert sum(p.stat().st_size for p in (DEMO_DIR / DEMO).rglob("*") if p.is_file()) <= 10 * 1024 * 1024
    model = load_model(DEMO)
    assert model.fingerprint == manifest["fingerprint"] and model.image_shape == (3, 32, 32)
    check = manifest["check"]
    assert check["auc"] >= 0.85, "the photo demo's target: SimA separates its members clearly"
    members, member_ids, heldout, heldout_ids = datasets.demo_sets(model)
    assert len(members) == 128 and len(heldout) == 500 and not set(member_ids) & set(heldout_ids)
    result = run_audit(model, members, heldout, attack=SimA(), timesteps=[check["t"]], seed=check["seed"],
                       n_bootstrap=0, member_ids=member_ids, nonmember_ids=heldout_ids)
    assert result.per_t[0]["auc"] == pytest.approx(check["auc"], abs=0.005)
