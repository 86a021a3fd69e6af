"""The bundled demos: offline loading, fingerprints, the fixed split, recorded audits, example images."""

import csv
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from PIL import Image

from core import DataError, datasets, demo_names, load_model
from core.attacks import SimA
from core.audit import run_audit
from core.images import load_image
from core.models.registry import DEMO_DIR

EXPECTED = {
    "digits-ddpm-memorising": "pixel",
    "digits-ddpm-generalising": "pixel",
    "digits-ldm-beta-low": "latent",
    "digits-ldm-beta-high": "latent",
    "digits-empirical": "empirical",
}
EXAMPLES = DEMO_DIR.parent / "examples"
MB = 1024 * 1024


def manifest(name):
    return json.loads((DEMO_DIR / name / "manifest.json").read_text())


def folder_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in EXPECTED}


def test_every_demo_is_bundled_and_small():
    assert set(EXPECTED) <= set(demo_names())
    sizes = {name: folder_bytes(DEMO_DIR / name) for name in EXPECTED}
    assert all(size <= 10 * MB for size in sizes.values()), sizes
    assert folder_bytes(DEMO_DIR) <= 40 * MB


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_demo_loads_offline_with_the_fingerprint_of_its_manifest(models, name):
    model, recorded = models[name], manifest(name)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert model.kind == EXPECTED[name] == recorded["kind"]
    assert model.fingerprint == recorded["fingerprint"]
    assert model.image_shape == (1, 16, 16)


def test_the_demo_split_is_fixed_nested_and_disjoint():
    small, large = datasets.digits_split(256), datasets.digits_split(900)
    assert small == datasets.digits_split(256)  # reproducible
    assert small.heldout_ids == large.heldout_ids and len(small.heldout_ids) == 500
    assert set(small.member_ids) < set(large.member_ids)
    assert not set(large.member_ids) & set(large.heldout_ids)
    for name in EXPECTED:
        recorded = manifest(name)
        expected = datasets.digits_split(len(recorded["member_ids"]))
        assert recorded["member_ids"] == expected.member_ids and recorded["heldout_ids"] == expected.heldout_ids
    same_members = [manifest(n)["member_ids"] for n in EXPECTED if n != "digits-ddpm-generalising"]
    assert all(ids == same_members[0] for ids in same_members)


def test_every_autoencoder_was_trained_on_digits_outside_its_demos_split():
    """A latent demo whose autoencoder saw its members would leak through the autoencoder, not the
    diffusion model (the unfair set-up the latent bottleneck study replaced)."""
    with_vae = [name for name in demo_names() if manifest(name)["kind"] in ("latent", "text")]
    assert {n for n in EXPECTED if EXPECTED[n] == "latent"} <= set(with_vae)
    for name in with_vae:
        recorded = manifest(name)
        vae_ids = set(recorded["vae_train_ids"])
        assert len(vae_ids) == len(recorded["vae_train_ids"]), name
        assert not vae_ids & (set(recorded["member_ids"]) | set(recorded["heldout_ids"])), name
    # The latent study's autoencoders go further: no digit of any demo's split (the largest is 900 + 500).
    largest = datasets.digits_split(900)
    for name in (n for n in with_vae if manifest(n)["kind"] == "latent"):
        assert not set(manifest(name)["vae_train_ids"]) & set(largest.member_ids + largest.heldout_ids), name


def test_demo_images_are_exact_uint8_pictures():
    images, ids = datasets.digits_images(16)
    assert images.shape == (1797, 1, 16, 16) and len(set(ids)) == 1797
    pictures = torch.from_numpy(datasets.digits_uint8(16)).unsqueeze(1)
    assert torch.equal(images, 2 * (pictures.float() / 255) - 1)  # the float32 steps core.data takes


def test_demo_sets_follow_the_manifest_and_need_one(models):
    members, member_ids, heldout, heldout_ids = datasets.demo_sets(models["digits-ddpm-memorising"])
    assert len(members) == len(member_ids) == 256 and len(heldout) == len(heldout_ids) == 500
    assert torch.equal(members, datasets.digits_by_ids(member_ids))
    with pytest.raises(DataError, match="manifest"):
        datasets.demo_sets(type("Model", (), {"manifest": None, "name": "uploaded"})())
    with pytest.raises(DataError, match="only 'sklearn-digits'"):
        datasets.split_images({"dataset": {"name": "cifar10"}, "member_ids": ["a"]}, "members")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_short_audit_reproduces_the_recorded_auc(models, name):
    check = manifest(name)["check"]
    model = models[name]
    t = check["t"]
    grid = sorted({max(0, t - 10), t, min(model.num_train_timesteps - 1, t + 10)})
    if name != "digits-ddpm-memorising":
        grid = [t]  # one timestep is enough to compare; the memorising demo also shows its neighbours
    members, member_ids, heldout, heldout_ids = datasets.demo_sets(model)
    result = run_audit(model, members, heldout, attack=SimA(), timesteps=grid, seed=check["seed"], n_bootstrap=0,
                       member_ids=member_ids, nonmember_ids=heldout_ids)
    auc = next(row["auc"] for row in result.per_t if row["t"] == t)
    low, high = check["auc_ci"]
    assert low <= auc <= high
    assert auc == pytest.approx(check["auc"], abs=0.005)


def test_the_memorising_demo_meets_its_targets():
    check = manifest("digits-ddpm-memorising")["check"]
    assert check["auc"] >= 0.95 and check["tpr_at_1pct_fpr"] >= 0.5
    general = manifest("digits-ddpm-generalising")["check"]
    assert 0.6 < general["auc"] < check["auc"]


def test_example_pngs_reload_to_the_training_tensors():
    with open(EXAMPLES / "examples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    recorded = manifest("digits-ddpm-memorising")
    labels = [row["label"] for row in rows]
    assert labels.count("member") >= 6 and labels.count("heldout") >= 6
    for row in rows:
        assert row["model"] == "digits-ddpm-memorising"
        side = recorded["member_ids"] if row["label"] == "member" else recorded["heldout_ids"]
        assert row["id"] in side
        tensor, notes = load_image(EXAMPLES / row["file"], channels=1, size=16)
        assert notes == []
        assert torch.equal(tensor, datasets.digits_by_ids([row["id"]])[0])
        with Image.open(EXAMPLES / row["file"]) as png:
            assert png.mode == "L" and png.size == (16, 16)


def test_examples_are_rebuilt_identically(tmp_path):
    rows = datasets.write_examples(tmp_path, manifest("digits-ddpm-memorising"), "digits-ddpm-memorising", per_side=2)
    with open(EXAMPLES / "examples.csv", newline="") as handle:
        committed = {row["file"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 4
    for row in rows:
        assert committed[row["file"]] == row
        with Image.open(tmp_path / row["file"]) as new, Image.open(EXAMPLES / row["file"]) as old:
            assert new.tobytes() == old.tobytes()


# ----------------------------------------------------------------------------- the captioned demo

CAPTIONED = "digits-sd-captioned"


@pytest.fixture(scope="module")
def captioned():
    return load_model(CAPTIONED)


def test_the_captioned_demo_is_a_small_stable_diffusion_folder_that_loads_offline(captioned):
    recorded = manifest(CAPTIONED)
    folder = DEMO_DIR / CAPTIONED
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    assert folder_bytes(folder) < 5 * MB
    assert captioned.conditional and captioned.image_shape == (1, 16, 16)
    assert captioned.fingerprint == recorded["fingerprint"]


def test_the_captioned_demos_autoencoder_saw_neither_members_nor_held_out_digits():
    recorded = manifest(CAPTIONED)
    vae_ids, members, heldout = (set(recorded[k]) for k in ("vae_train_ids", "member_ids", "heldout_ids"))
    assert len(vae_ids) == 1000 and not vae_ids & members and not vae_ids & heldout
    assert recorded["member_ids"] == datasets.digits_split(256).member_ids  # the memorising demo's members
    ids = recorded["member_ids"] + recorded["heldout_ids"]
    assert recorded["captions"] == dict(zip(ids, datasets.digit_captions(ids)))
    assert datasets.demo_captions(type("Model", (), {"manifest": recorded, "name": CAPTIONED})()).for_ids(ids[:3]) \
        == datasets.digit_captions(ids[:3])


def test_the_captioned_demos_members_score_lower_with_their_own_captions(captioned):
    from core.scoring import statistics_at

    recorded = manifest(CAPTIONED)
    member_ids, heldout_ids = recorded["member_ids"][:12], recorded["heldout_ids"][:12]
    ids = member_ids + heldout_ids
    stats = statistics_at(captioned, datasets.digits_by_ids(ids), SimA(), 50, seed=0,
                          cond=datasets.digit_captions(ids)).numpy()
    assert stats[:12].mean() < stats[12:].mean()
    assert (stats[:12, None] < stats[None, 12:]).mean() > 0.8  # the AUC of this handful


def test_demo_sets_of_the_captioned_demo_bring_their_captions_on_the_command_line(tmp_path, capsys):
    from core.cli import main

    common = ["audit", "--model", CAPTIONED, "--members", "demo", "--nonmembers", "demo", "--attack", "sima",
              "--timesteps", "50", "--bootstrap", "0", "--quiet", "--no-cache", "--json"]
    assert main(common) == 0
    captioned = json.loads(capsys.readouterr().out)
    assert captioned["extra"]["condition"] == "caption"
    assert main([*common, "--condition", "empty"]) == 0
    empty = json.loads(capsys.readouterr().out)
    assert empty["extra"]["condition"] == "empty"
    assert captioned["per_t"][0]["auc"] > empty["per_t"][0]["auc"]  # its members were trained with these captions


def test_paired_comparisons_name_the_condition_of_each_audit(captioned):
    from core.audit import compare_results

    members, member_ids, heldout, heldout_ids = datasets.demo_sets(captioned)
    keep = dict(members=members[:40], nonmembers=heldout[:40], member_ids=member_ids[:40], nonmember_ids=heldout_ids[:40])
    common = dict(attack=SimA(), timesteps=[50], seed=0, n_bootstrap=20)
    caption = run_audit(captioned, keep["members"], keep["nonmembers"], member_ids=keep["member_ids"],
                        nonmember_ids=keep["nonmember_ids"], member_cond=datasets.digit_captions(keep["member_ids"]),
                        nonmember_cond=datasets.digit_captions(keep["nonmember_ids"]), **common)
    empty = run_audit(captioned, keep["members"], keep["nonmembers"], member_ids=keep["member_ids"],
                      nonmember_ids=keep["nonmember_ids"], **common)
    assert (caption.label, empty.label) == ("sima (caption)", "sima (empty)")
    assert "sima (caption)" in compare_results(caption, empty).sentence()
