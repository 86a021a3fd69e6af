"""core.train: tiny runs of each kind, resumable checkpoints, the manifest, the config rules."""

import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors.torch import load_file

from core import SimaError, datasets, load_model
from core import train as training
from core.models.latent import LatentModel
from core.models.pixel import PixelModel

TINY_UNET = {
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
}
TINY_VAE = {
    "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "mid_block_add_attention": False,
}
# One thread: on a busy machine, two threads make these tiny steps ten times slower.
PHASE = {"steps": 20, "batch_size": 8, "checkpoint_every": 10, "warmup_steps": 5}


def pixel_config(**extra):
    return {"kind": "pixel", "data": {"size": 8, "members": 24, "heldout": 24}, "unet": TINY_UNET,
            "train": dict(PHASE), "check": None, "threads": 1, **extra}


def latent_config(**extra):
    return {"kind": "latent", "data": {"size": 8, "members": 24, "heldout": 24}, "unet": TINY_UNET,
            "vae": TINY_VAE, "vae_train": {**PHASE, "beta": 1e-3, "images": 40}, "train": dict(PHASE), "check": None, "threads": 1,
            **extra}


TINY_TEXT_UNET = {
    **TINY_UNET, "attention_head_dim": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
}


def text_config(**extra):
    return {"kind": "text", "data": {"size": 8, "members": 24, "heldout": 24}, "unet": TINY_TEXT_UNET,
            "vae": TINY_VAE, "vae_train": {**PHASE, "beta": 1e-3, "images": 40}, "train": dict(PHASE), "check": None, "threads": 1,
            "text_encoder": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
            "conditioning": {"caption_dropout": 0.1}, **extra}


def weights(folder, component="unet"):
    return load_file(str(folder / component / "diffusion_pytorch_model.safetensors"))


def test_a_pixel_run_saves_a_folder_that_loads_with_a_matching_manifest(tmp_path):
    out = training.train(pixel_config(name="tiny", check={"timesteps": [0, 20], "seed": 0}), tmp_path / "m", progress=False)
    model = load_model(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert isinstance(model, PixelModel) and model.image_shape == (1, 8, 8)
    assert manifest["fingerprint"] == model.fingerprint
    assert manifest["kind"] == "pixel" and manifest["steps"] == {"unet": 20}
    split = datasets.digits_split(24, n_heldout=24)
    assert manifest["member_ids"] == split.member_ids and manifest["heldout_ids"] == split.heldout_ids
    assert manifest["config"] == training.resolve_config(pixel_config(name="tiny", check={"timesteps": [0, 20], "seed": 0}))
    assert manifest["wall_time_s"] > 0 and "torch" in manifest["packages"]
    assert manifest["check"]["t"] in (0, 20) and 0 <= manifest["check"]["auc"] <= 1
    assert json.loads((out / "train.json").read_text()) == manifest["config"]
    assert not (out / "checkpoint").exists()
    assert model.training_set_size() == 24


def test_a_latent_run_trains_its_autoencoder_on_other_digits_and_whitens_their_latents(tmp_path):
    out = training.train(latent_config(), tmp_path / "ldm", progress=False)
    model = load_model(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert isinstance(model, LatentModel) and model.sample_shape == (2, 4, 4)
    assert manifest["fingerprint"] == model.fingerprint
    assert manifest["steps"] == {"unet": 20, "vae": 20}
    vae_ids = manifest["vae_train_ids"]
    assert vae_ids == datasets.digits_outside_ids(40, n_members=24, n_heldout=24)
    assert not set(vae_ids) & (set(manifest["member_ids"]) | set(manifest["heldout_ids"]))
    assert manifest["vae_loss"]["reconstruction"] == "mean" and "averaged over pixels" in manifest["vae_loss"]["normalisation"]
    with torch.no_grad():
        means = model.vae.encode(datasets.digits_by_ids(vae_ids, 8)).latent_dist.mean.to(torch.float64)
    assert math.isclose(model.scaling_factor, 1 / float(means.std()), rel_tol=1e-6)
    assert json.loads((out / "vae" / "config.json").read_text())["scaling_factor"] == model.scaling_factor
    assert set(manifest["vae_reconstruction_mse"]) == {"members", "heldout", "vae_train"}


@pytest.mark.parametrize("reconstruction, scale", [("mean", 1 / 64), ("sum", 1.0)])
def test_the_autoencoder_loss_is_normalised_as_its_config_says(reconstruction, scale):
    """With beta = 0 the loss is the summed squared error, divided by the pixel count for "mean"."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**training.resolve_config(latent_config())["vae"]).eval()
    images = datasets.digits_by_ids(datasets.digits_outside_ids(4, n_members=24, n_heldout=24), 8)
    got = training._vae_loss(images, 0.0, reconstruction)(vae, torch.Generator().manual_seed(1), 4)
    gen = torch.Generator().manual_seed(1)
    x = images[torch.randint(4, (4,), generator=gen)]
    posterior = vae.encode(x).latent_dist
    summed = (vae.decode(posterior.sample(generator=gen)).sample - x).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(got, summed * scale)


def test_a_text_run_saves_a_stable_diffusion_folder_whose_autoencoder_never_saw_the_split(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = training.train(text_config(), tmp_path / "sd", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "tokenizer" / "merges.txt").is_file()
    vae_ids = manifest["vae_train_ids"]
    assert len(vae_ids) == 40 and vae_ids == datasets.digits_outside_ids(40, n_members=24, n_heldout=24)
    assert not set(vae_ids) & (set(manifest["member_ids"]) | set(manifest["heldout_ids"]))
    ids = manifest["member_ids"] + manifest["heldout_ids"]
    assert manifest["captions"] == dict(zip(ids, datasets.digit_captions(ids)))
    assert [p["step"] for p in manifest["learning_curve"]] == [10, 20]
    assert all(0 <= p["auc_caption_t50"] <= 1 for p in manifest["learning_curve"])
    # diffusers' own pipeline loads the folder offline and embeds prompts with its own tokenizer
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.tokenizer("a thin handwritten six").input_ids[1:-1] == [
        pipe.tokenizer.get_vocab()[w + "</w>"] for w in ("a", "thin", "handwritten", "six")]
    # the scaling whitens the latents of the autoencoder's own digits, not the members'
    with torch.no_grad():
        means = pipe.vae.encode(datasets.digits_by_ids(vae_ids, 8)).latent_dist.mean.to(torch.float64)
    assert math.isclose(pipe.vae.config.scaling_factor, 1 / float(means.std()), rel_tol=1e-6)
    assert manifest["fingerprint"] == load_model(out).fingerprint


class Crash(Exception):
    pass


def crash_after_checkpoint(monkeypatch, phase, step):
    """Make the run die right after saving the checkpoint of ``phase`` at ``step``."""
    save = training.Checkpoints.save

    def save_then_crash(self, name, module, opt, gen, at, wall, loss):
        save(self, name, module, opt, gen, at, wall, loss)
        if (name, at) == (phase, step):
            raise Crash

    monkeypatch.setattr(training.Checkpoints, "save", save_then_crash)


@pytest.mark.parametrize("config, crashes", [(pixel_config, ["unet"]), (latent_config, ["vae", "unet"]),
                                             (text_config, ["unet"])])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, config, crashes):
    whole = training.train(config(), tmp_path / "whole", progress=False)
    for phase in crashes:  # the latent run dies once in each phase
        with monkeypatch.context() as patch:
            crash_after_checkpoint(patch, phase, 10)
            with pytest.raises(Crash):
                training.train(config(), tmp_path / "resumed", progress=False)
        progress = json.loads((tmp_path / "resumed" / "checkpoint" / "progress.json").read_text())
        assert progress["phases"][phase]["step"] == 10
    resumed = training.train(config(), tmp_path / "resumed", progress=False)
    for component in ("unet", "vae") if config is not pixel_config else ("unet",):
        a, b = weights(whole, component), weights(resumed, component)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(whole).fingerprint == load_model(resumed).fingerprint
    recorded = [json.loads((folder / "manifest.json").read_text()) for folder in (whole, resumed)]
    assert recorded[0]["training"] == recorded[1]["training"]
    assert all(math.isfinite(v) for v in recorded[0]["training"].values())
    # the text run's learning curve survives the crash: the resumed run records the same points
    assert recorded[0].get("learning_curve") == recorded[1].get("learning_curve")


def test_resume_false_starts_again_and_a_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_after_checkpoint(patch, "unet", 10)
        with pytest.raises(Crash):
            training.train(pixel_config(), tmp_path / "m", progress=False)
    other = pixel_config(seed=1)
    with pytest.raises(SimaError, match="different training config"):
        training.train(other, tmp_path / "m", progress=False)
    out = training.train(other, tmp_path / "m", progress=False, resume=False)
    fresh = training.train(other, tmp_path / "fresh", progress=False)
    assert load_model(out).fingerprint == load_model(fresh).fingerprint


def test_the_default_output_folder_is_the_config_files_folder(tmp_path):
    path = tmp_path / "demo" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(pixel_config(train={**PHASE, "steps": 2})))
    assert training.train(path, progress=False) == path.parent
    assert (path.parent / "manifest.json").is_file()
    assert json.loads(path.read_text()) == pixel_config(train={**PHASE, "steps": 2})  # the user's file is untouched


def test_the_ddpm_loss_vanishes_for_the_exact_noise_predictor():
    # With one training image y, the true noise is recoverable from x_t:
    # eps = (x_t - sqrt(abar_t) y) / sqrt(1 - abar_t). A loss that noises differently is not ~0.
    y = torch.rand(1, 1, 8, 8) * 2 - 1
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            a = abar[t].view(-1, 1, 1, 1)
            return type("Out", (), {"sample": (x - a.sqrt() * y) / (1 - a).sqrt()})

    loss = training._ddpm_loss(y, abar)(Oracle(), torch.Generator().manual_seed(0), 64)
    assert float(loss) < 1e-8


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero():
    settings = {"lr": 1.0, "warmup_steps": 10, "steps": 110, "schedule": "cosine"}
    assert training.learning_rate(settings, 0) == pytest.approx(0.1)
    assert training.learning_rate(settings, 9) == pytest.approx(1.0)
    assert training.learning_rate(settings, 10) == pytest.approx(1.0)
    assert training.learning_rate(settings, 60) == pytest.approx(0.5)
    assert training.learning_rate(settings, 109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert training.learning_rate({**settings, "schedule": "constant"}, 100) == 1.0


def test_config_mistakes_are_explained():
    with pytest.raises(SimaError, match="Unknown training config keys"):
        training.resolve_config({"kind": "pixel", "epochs": 3})
    with pytest.raises(SimaError, match=r"Unknown keys \['step'\] in config 'train'"):
        training.resolve_config({"kind": "pixel", "train": {"step": 5}})
    with pytest.raises(SimaError, match="kind"):
        training.resolve_config({"kind": "gan"})
    with pytest.raises(SimaError, match="unet.in_channels"):
        training.resolve_config({"kind": "pixel", "unet": {**TINY_UNET, "in_channels": 3}})
    with pytest.raises(SimaError, match="out_dir"):
        training.train(pixel_config())
    with pytest.raises(SimaError, match="no such training config"):
        training.train("/nonexistent/train.json")


def test_only_the_phases_a_change_affects_must_restart():
    base = training.resolve_config(latent_config())
    longer_unet = training.resolve_config(latent_config(train={**PHASE, "steps": 40}))
    other_beta = training.resolve_config(latent_config(vae_train={**PHASE, "beta": 1.0}))
    renamed = training.resolve_config(latent_config(name="other", demo="text"))
    digests = training.phase_digests
    assert digests(longer_unet)["vae"] == digests(base)["vae"] and digests(longer_unet)["unet"] != digests(base)["unet"]
    assert all(digests(other_beta)[p] != digests(base)[p] for p in ("vae", "unet"))
    assert digests(renamed) == digests(base)


def test_fit_ddpm_resumes_an_interrupted_run_to_the_same_weights(tmp_path):
    from tests.helpers import ddpm_abar, tiny_unet

    data = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 1}
    whole = tiny_unet()
    seen = []
    training.fit_ddpm(whole, data, ddpm_abar(), settings, seed=3, checkpoint_dir=tmp_path / "a", progress=False,
                      on_checkpoint=lambda step, module: seen.append((step, module.training)))
    assert seen == [(2, False), (4, False)]  # the callback sees the module in eval mode

    def crash(step, module):
        raise KeyboardInterrupt

    resumed = tiny_unet()
    with pytest.raises(KeyboardInterrupt):
        training.fit_ddpm(resumed, data, ddpm_abar(), settings, seed=3, checkpoint_dir=tmp_path / "b",
                          progress=False, on_checkpoint=crash)
    resumed = tiny_unet()  # a fresh process would start from fresh weights and find the checkpoint
    fitted = training.fit_ddpm(resumed, data, ddpm_abar(), settings, seed=3, checkpoint_dir=tmp_path / "b",
                               progress=False)
    assert math.isfinite(fitted["final_loss"]) and fitted["wall_time_s"] > 0
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(SimaError, match="Unknown training settings"):
        training.fit_ddpm(tiny_unet(), data, ddpm_abar(), {"epochs": 3}, seed=3, checkpoint_dir=tmp_path / "c")


def test_a_latent_model_can_train_on_posterior_samples_with_their_variance_in_the_scaling(tmp_path):
    out = training.train(latent_config(vae_train={**PHASE, "beta": 1e-3, "images": 40, "latents": "sample"}),
                         tmp_path / "ldm", progress=False)
    model = load_model(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "fresh posterior sample" in manifest["diffusion_latents"]
    with torch.no_grad():
        dist = model.vae.encode(datasets.digits_by_ids(manifest["vae_train_ids"], 8)).latent_dist
    mean, std = dist.mean.to(torch.float64), dist.std.to(torch.float64)
    assert math.isclose(model.scaling_factor, float(1 / (mean.var() + std.pow(2).mean()).sqrt()), rel_tol=1e-6)


def test_the_sampled_latent_loss_draws_one_posterior_sample_per_step():
    gen = torch.Generator().manual_seed(0)
    data, spread = torch.randn(5, 2, 2, 2, generator=gen), torch.rand(5, 2, 2, 2, generator=gen)
    abar = torch.linspace(0.99, 0.01, 10)
    seen = {}

    def unet(x, t):
        seen["x"], seen["t"] = x, t
        return type("Out", (), {"sample": torch.zeros_like(x)})()

    loss = training._ddpm_loss(data, abar, spread)(unet, torch.Generator().manual_seed(3), 4)
    g = torch.Generator().manual_seed(3)
    pick, t = torch.randint(5, (4,), generator=g), torch.randint(10, (4,), generator=g)
    x0 = data[pick] + spread[pick] * torch.randn((4, 2, 2, 2), generator=g)
    eps = torch.randn((4, 2, 2, 2), generator=g)
    a = abar[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(loss, eps.pow(2).mean())


def test_text_models_train_on_posterior_means_only():
    with pytest.raises(SimaError, match="vae_train.latents"):
        training.resolve_config(text_config(vae_train={**PHASE, "beta": 1e-3, "images": 40, "latents": "sample"}))
