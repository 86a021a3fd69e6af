"""Text- and class-conditional models: parity of `sima score` / `sima audit` with a direct
computation from the pipeline's own components, LoRA, captions files, hostile captions.

Every pipeline here is built from configs in a temporary folder (tests/tiny_pipelines.py),
with a tokenizer the test writes; nothing is downloaded.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import load_model
from core.attacks import CLiD, ConditioningGap, SimA, keyed_noise
from core.attacks.conditional import reduced_caption
from core.conditioning import caption_key
from core.cli import main
from core.errors import DataError, ModelError
from core.hashing import row_digests
from tests import tiny_pipelines as tp

CAPTIONS = {"a.png": "a cat", "b.png": "the dog on a mat", "c.png": "", "d.png": "Ünïcödé 猫 \x07\x1b[31m ctrl"}
RTOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    sd1 = tp.sd_pipeline(root / "sd1")
    return {
        "sd1": sd1,
        "sd2": tp.sd_pipeline(root / "sd2", prediction_type="v_prediction", seed=3),
        "sdxl": tp.sdxl_pipeline(root / "sdxl", seed=5),
        "dit": tp.dit_pipeline(root / "dit", seed=7),
        "lora": tp.sd_lora(root / "lora", sd1),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four 16x16 RGB PNGs, each with its caption in captions.csv."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in CAPTIONS:
        Image.fromarray(rng.integers(0, 256, (tp.IMAGE, tp.IMAGE, 3), dtype=np.uint8)).save(folder / name)
    table = folder.parent / f"{folder.name}-captions.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(CAPTIONS.items())
    return folder, table


@functools.lru_cache(maxsize=None)
def _pipeline(folder: Path):
    """The diffusers pipeline of a folder, loaded by diffusers itself (once per folder)."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder)


def _pixels(folder: Path, names) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.open(folder / n).convert("RGB"), dtype=np.float32))
                        .permute(2, 0, 1) / 127.5 - 1 for n in names])


def _run(capsys, *argv) -> list[dict]:
    code = main([*argv, "--json", "--no-cache", "--quiet", "--batch-size", "8"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _fail(capsys, *argv) -> str:
    code = main([*argv, "--no-cache", "--quiet", "--batch-size", "8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def _direct_sd(pipe, x: torch.Tensor, t: torch.Tensor, captions: list[str] | None) -> torch.Tensor:
    """SimA with the pipeline's own parts: encode_prompt, VAE posterior mean x scaling factor, UNet."""
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(captions if captions is not None else [""] * len(x), device="cpu",
                                       num_images_per_prompt=1, do_classifier_free_guidance=False)
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        out = pipe.unet(z, t, encoder_hidden_states=embeds).sample.double()
    if pipe.scheduler.config.prediction_type == "v_prediction":
        a = pipe.scheduler.alphas_cumprod[t].double().view(-1, 1, 1, 1)
        out = a.sqrt() * out + (1 - a).sqrt() * z.double()
    return out.pow(4).flatten(1).sum(1)


@pytest.mark.parametrize("which", ["sd1", "sd2"])
@pytest.mark.parametrize("mode", ["caption", "empty"])
def test_sima_score_equals_the_pipelines_own_computation(folders, images, capsys, which, mode):
    folder, table = images
    names = sorted(CAPTIONS)
    records = _run(capsys, "score", "--model", str(folders[which]), "--t", "50", "--captions", str(table),
                   "--condition", mode, *(str(folder / n) for n in names))
    pipe = _pipeline(folders[which])
    direct = _direct_sd(pipe, _pixels(folder, names), torch.full((4,), 50),
                        [CAPTIONS[n] for n in names] if mode == "caption" else None)
    assert [r["file"] for r in records] == names
    np.testing.assert_allclose([r["statistic"] for r in records], direct.numpy(), rtol=RTOL)


def _member_folders(folder, tmp_path):
    """a.png, b.png as members and c.png, d.png as non-members, each side in its own folder."""
    members, nonmembers = tmp_path / "members", tmp_path / "nonmembers"
    for sub, names in ((members, ["a.png", "b.png"]), (nonmembers, ["c.png", "d.png"])):
        sub.mkdir()
        for n in names:
            (sub / n).write_bytes((folder / n).read_bytes())
    return members, nonmembers


def test_sima_audit_samples_equal_the_pipelines_own_computation(folders, images, capsys, tmp_path):
    folder, table = images
    members, nonmembers = _member_folders(folder, tmp_path)
    _run(capsys, "audit", "--model", str(folders["sd2"]), "--members", str(members), "--nonmembers", str(nonmembers),
         "--captions", str(table), "--timesteps", "10,90", "--bootstrap", "0", "--out", str(tmp_path / "out"))
    with open(tmp_path / "out" / "samples.csv") as handle:
        rows = {r["id"]: r for r in csv.DictReader(handle)}
    assert set(rows) == set(CAPTIONS) and "t10" in rows["a.png"] and "t90" in rows["a.png"]
    pipe = _pipeline(folders["sd2"])
    names = sorted(CAPTIONS)
    for t in (10, 90):
        direct = _direct_sd(pipe, _pixels(folder, names), torch.full((4,), t), [CAPTIONS[n] for n in names])
        np.testing.assert_allclose([float(rows[n][f"t{t}"]) for n in names], direct.numpy(), rtol=RTOL)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["extra"] == {"condition": "caption"}


def test_sdxl_statistic_equals_the_pipelines_own_computation(folders, images):
    folder, _ = images
    names = sorted(CAPTIONS)
    x, t = _pixels(folder, names), torch.tensor([10, 50, 200, 500])
    model = load_model(folders["sdxl"])
    pipe = _pipeline(folders["sdxl"])
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        time_ids = torch.tensor([[tp.IMAGE, tp.IMAGE, 0, 0, tp.IMAGE, tp.IMAGE]] * 4, dtype=torch.float32)
        embeds, _, pooled, _ = pipe.encode_prompt([CAPTIONS[n] for n in names], device="cpu",
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        # an absent prompt: the pipeline's zeros (force_zeros_for_empty_prompt)
        for cond, (e, p) in (([CAPTIONS[n] for n in names], (embeds, pooled)),
                             (None, (torch.zeros_like(embeds), torch.zeros_like(pooled)))):
            out = pipe.unet(z, t, encoder_hidden_states=e, added_cond_kwargs={"text_embeds": p, "time_ids": time_ids}).sample
            ours = SimA().statistic(model, model.encode(x), t, cond=cond)
            torch.testing.assert_close(ours, out.double().pow(4).flatten(1).sum(1), rtol=RTOL, atol=0)


def test_dit_statistic_with_labels_and_null_class_equals_the_transformer(folders, images, capsys, tmp_path):
    folder, _ = images
    names = sorted(CAPTIONS)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"file": n, "label": i * 3}) + "\n" for i, n in enumerate(names)))
    pipe = _pipeline(folders["dit"])
    x = _pixels(folder, names)
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    for mode, classes in (("caption", [0, 3, 6, 9]), ("empty", [10] * 4)):  # 10 = the null class of 10 classes
        records = _run(capsys, "score", "--model", str(folders["dit"]), "--t", "30", "--labels", str(labels),
                       "--condition", mode, *(str(folder / n) for n in names))
        with torch.no_grad():
            out = pipe.transformer(z, timestep=torch.full((4,), 30), class_labels=torch.tensor(classes)).sample
        assert out.shape[1] == 8  # learned variance: the first half is the noise
        np.testing.assert_allclose([r["statistic"] for r in records], out[:, :4].double().pow(4).flatten(1).sum(1), rtol=RTOL)
    assert "out of range" in _fail(capsys, "score", "--model", str(folders["dit"]), "--labels",
                                   str(_table(tmp_path / "bad.csv", "label", {"a.png": "12"})), str(folder / "a.png"))


def _table(path: Path, column: str, rows: dict) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", column])
        writer.writerows(rows.items())
    return path


def test_lora_score_equals_the_pipeline_with_diffusers_lora_and_changes_the_fingerprint(folders, images, capsys):
    from diffusers import StableDiffusionPipeline

    folder, table = images
    names = sorted(CAPTIONS)
    records = _run(capsys, "score", "--model", str(folders["sd1"]), "--lora", str(folders["lora"]), "--lora-scale", "0.5",
                   "--t", "40", "--captions", str(table), *(str(folder / n) for n in names))
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd1"])
    pipe.load_lora_weights(folders["lora"], adapter_name="fine-tune")
    pipe.set_adapters(["fine-tune"], [0.5])
    direct = _direct_sd(pipe, _pixels(folder, names), torch.full((4,), 40), [CAPTIONS[n] for n in names])
    np.testing.assert_allclose([r["statistic"] for r in records], direct.numpy(), rtol=RTOL)
    base = load_model(folders["sd1"])
    prints = {base.fingerprint, load_model(folders["sd1"], lora=folders["lora"]).fingerprint,
              load_model(folders["sd1"], lora=folders["lora"], lora_scale=0.5).fingerprint}
    assert len(prints) == 3
    base_stats = SimA().statistic(base, base.encode(_pixels(folder, names)), 40, cond=[CAPTIONS[n] for n in names])
    assert not torch.allclose(base_stats, torch.tensor([r["statistic"] for r in records], dtype=torch.float64))


def test_a_lora_for_another_base_model_is_refused_with_one_line(folders, images, capsys):
    folder, _ = images
    err = _fail(capsys, "score", "--model", str(folders["sdxl"]), "--lora", str(folders["lora"]), str(folder / "a.png"))
    assert "made for another base model" in err
    assert "applies only to" in _fail(capsys, "score", "--model", str(folders["dit"]), "--lora", str(folders["lora"]),
                                      str(folder / "a.png"))


def test_hostile_captions_give_a_result_or_one_clear_line(folders, images, capsys, tmp_path):
    folder, _ = images
    hostile = {"a.png": "word " * 1000, "b.png": "", "c.png": "\x00\x01\u202e\ufeff日本語 🙂", "d.png": "\r\n\t"}
    records = _run(capsys, "score", "--model", str(folders["sd1"]), "--t", "20", "--captions",
                   str(_table(tmp_path / "hostile.csv", "caption", hostile)), *(str(folder / n) for n in sorted(hostile)))
    assert len(records) == 4 and all(np.isfinite(r["statistic"]) for r in records)
    too_long = _table(tmp_path / "long.csv", "caption", {"a.png": "x" * 30_000})
    assert "shorten it" in _fail(capsys, "score", "--model", str(folders["sd1"]), "--captions", str(too_long), str(folder / "a.png"))
    missing = _table(tmp_path / "missing.csv", "caption", {"a.png": "a cat"})
    err = _fail(capsys, "score", "--model", str(folders["sd1"]), "--captions", str(missing), str(folder / "a.png"), str(folder / "b.png"))
    assert "'b.png'" in err and "--condition empty" in err
    (tmp_path / "bad.csv").write_bytes(b"file,caption\na.png,\xff\xfe\n")
    assert "UTF-8" in _fail(capsys, "score", "--model", str(folders["sd1"]), "--captions", str(tmp_path / "bad.csv"), str(folder / "a.png"))
    assert "unconditional" in _fail(capsys, "score", "--model", "digits-ddpm-memorising", "--captions", str(missing), str(folder / "a.png"))
    assert "--labels" in _fail(capsys, "score", "--model", str(folders["dit"]), "--captions", str(missing), str(folder / "a.png"))


def test_captions_from_jsonl_and_sidecar_files_in_folders_and_zips_match_the_csv(folders, images, capsys, tmp_path):
    folder, table = images
    names = sorted(CAPTIONS)
    expected = [r["statistic"] for r in _run(capsys, "score", "--model", str(folders["sd1"]), "--t", "60", "--captions",
                                             str(table), *(str(folder / n) for n in names))]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"file": f"imgs/{n}", "caption": c}) + "\n" for n, c in CAPTIONS.items()))
    side = tmp_path / "side"
    side.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n, c in CAPTIONS.items():
            (side / n).write_bytes((folder / n).read_bytes())
            (side / n).with_suffix(".txt").write_text(c, encoding="utf-8")
            archive.writestr(f"set/{n}", (folder / n).read_bytes())
            archive.writestr(f"set/{Path(n).stem}.txt", c.encode())
    (tmp_path / "set.zip").write_bytes(buffer.getvalue())
    for argv in (["--captions", str(jsonl), *(str(folder / n) for n in names)],
                 ["--captions", "sidecar", str(side)],
                 ["--captions", "sidecar", str(tmp_path / "set.zip")]):
        got = _run(capsys, "score", "--model", str(folders["sd1"]), "--t", "60", *argv)
        np.testing.assert_allclose([r["statistic"] for r in got], expected, rtol=1e-6)


def test_a_changed_caption_is_recomputed_and_the_noise_is_keyed_by_the_image(folders, images, tmp_path):
    from core.audit import image_statistics
    from core.attacks import Loss
    from core.cache import ScoreCache

    folder, _ = images
    model = load_model(folders["sd1"])
    x = _pixels(folder, ["a.png", "b.png"])
    cache = ScoreCache(tmp_path / "cache")
    first = image_statistics(model, x, SimA(), [50], cond=["a cat", "a dog"], cache=cache, batch_size=8)
    changed = image_statistics(model, x, SimA(), [50], cond=["a cat", "a red dog"], cache=cache, batch_size=8)
    assert first[0, 0] == changed[0, 0] and first[1, 0] != changed[1, 0]
    fresh = image_statistics(model, x, SimA(), [50], cond=["a cat", "a red dog"], batch_size=8)
    # The recomputed pair ran in a smaller batch than the fresh run: float32 arithmetic may differ
    # in the last bits, far below the change a new caption makes.
    torch.testing.assert_close(changed, fresh, rtol=1e-5, atol=0)
    assert abs(first[1, 0] - changed[1, 0]) > 1e-3 * abs(first[1, 0])
    # the loss attack draws the same noise for a caption and for the empty prompt
    z = model.encode(x)
    noise = keyed_noise(row_digests(x), torch.full((2,), 50), 1, z.shape[1:], 0)
    for cond in (["a cat", "a dog"], None):
        swept = image_statistics(model, x, Loss(), [50], cond=cond, batch_size=8)[:, 0]
        torch.testing.assert_close(swept, Loss().statistic(model, z, 50, noise=noise, cond=cond), rtol=1e-6, atol=0)


def test_gap_and_clid_equal_their_definitions_from_the_pipeline(folders, images):
    folder, _ = images
    names = ["a.png", "b.png"]
    caps = [CAPTIONS[n] for n in names]
    model, x = load_model(folders["sd1"]), _pixels(folder, names)
    pipe = _pipeline(folders["sd1"])
    t = torch.full((2,), 70)
    gap = ConditioningGap().statistic(model, model.encode(x), t, cond=caps)
    torch.testing.assert_close(gap, _direct_sd(pipe, x, t, None) - _direct_sd(pipe, x, t, caps), rtol=RTOL, atol=1e-9)

    attack = CLiD(alpha=0.3)
    assert attack.queries_per_sample(0) == 15 and attack.member_when == "lower"
    noise = keyed_noise(row_digests(x), torch.full((2,), -1), 3, (4, 8, 8), 0)
    ours = attack.statistic(model, model.encode(x), 0, noise=noise, cond=caps)
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        losses = []
        for texts in [caps, *[[reduced_caption(c, r) for c in caps] for r in (0.3, 0.5, 0.7)], ["", ""]]:
            embeds, _ = pipe.encode_prompt(texts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
            per_t = []
            for j, step in enumerate((440, 450, 460)):
                steps = torch.full((2,), step)
                xt = pipe.scheduler.add_noise(z, noise[:, j], steps)
                per_t.append((pipe.unet(xt, steps, encoder_hidden_states=embeds).sample - noise[:, j]).double().pow(2).flatten(1).mean(1))
            losses.append(torch.stack(per_t).mean(0))
    discrepancy = torch.stack([l - losses[0] for l in losses[1:]]).mean(0)
    torch.testing.assert_close(ours, 0.7 * losses[0] - 0.3 * discrepancy, rtol=1e-4, atol=1e-7)
    assert reduced_caption("the dog on a mat", 0.3) == "the dog on" and reduced_caption("cat", 0.5) == ""


def test_clid_reports_the_queries_it_makes_on_caption_and_label_models(folders, images):
    folder, _ = images
    x = _pixels(folder, ["a.png", "b.png"])
    attack = CLiD()
    for name, cond in (("sd1", [CAPTIONS["a.png"], CAPTIONS["b.png"]]), ("dit", ["3", "6"])):
        model = load_model(folders[name])
        made = []
        raw = model._raw
        model._raw = lambda z, t, *c: made.append(z.shape[0]) or raw(z, t, *c)
        noise = keyed_noise(row_digests(x), torch.full((2,), -1), 3, tuple(model.sample_shape), 0)
        attack.statistic(model, model.encode(x), 0, noise=noise, cond=cond)
        assert sum(made) == 2 * attack.queries_at(model, 0), name
    assert attack.queries_at(load_model(folders["dit"]), 0) == 6 and attack.queries_at(load_model(folders["sd1"]), 0) == 15


def test_gap_and_clid_need_a_conditional_model_and_captions(folders, images, capsys):
    folder, table = images
    for attack in ("gap", "clid"):
        assert "conditional model" in _fail(capsys, "score", "--model", "digits-ddpm-memorising", "--attack", attack,
                                            str(folder / "a.png"))
        assert "needs the captions" in _fail(capsys, "score", "--model", str(folders["sd1"]), "--attack", attack,
                                             "--condition", "empty", "--captions", str(table), str(folder / "a.png"))


def test_mixed_captions_in_one_batch_match_each_sample_alone_and_embed_each_caption_once(folders, images):
    folder, _ = images
    model = load_model(folders["sd1"])
    x = model.encode(_pixels(folder, sorted(CAPTIONS)))
    caps = ["a cat", "a dog", "a cat", "a dog"]
    calls = []
    encoder = model.text_encoders[0]
    original = encoder.forward
    encoder.forward = lambda ids, **kw: (calls.append(ids.shape[0]), original(ids, **kw))[1]
    together = SimA().statistic(model, x, torch.tensor([5, 50, 5, 500]), cond=caps)
    assert calls == [2]  # two distinct captions, embedded once in one batch
    alone = torch.cat([SimA().statistic(model, x[i:i + 1], [5, 50, 5, 500][i], cond=[caps[i]]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=0)
    cond = model.condition(caps)
    assert cond[torch.tensor([3, 0])].keys == [cond.keys[3], cond.keys[0]]
    assert cond.repeat_interleave(2)[1:3].texts == ["a cat", "a dog"]


def test_unconditional_models_refuse_conditioning_and_conditional_ones_count_it(tiny_model_dir, folders):
    model = load_model(tiny_model_dir)
    assert model.conditional is False
    with pytest.raises(ModelError, match="unconditional"):
        model.eps(torch.zeros(1, *model.sample_shape), 10, cond=["a cat"])
    sd = load_model(folders["sd1"])
    with pytest.raises(DataError, match="one per sample"):
        sd.eps(torch.zeros(2, *sd.sample_shape), 10, cond=["a cat"])
    with pytest.raises(DataError, match="not a single string"):
        sd.eps(torch.zeros(1, *sd.sample_shape), 10, cond="a cat")


def test_every_attack_passes_each_samples_caption_to_every_query(folders, images):
    from core.attacks import PFAMI, PIA, PIAN, Loss, SecMI, SimAMC
    from core.batching import best_settings

    folder, _ = images
    model = load_model(folders["sd1"])
    x = _pixels(folder, ["a.png", "b.png"])
    z, keys = model.encode(x), row_digests(x)
    best_settings(model)  # the calibration queries the empty condition; measure it before counting
    seen = []
    original = model._raw
    model._raw = lambda x_, t_, cond: (seen.append(cond.keys), original(x_, t_, cond))[1]
    for attack in (SimAMC(k=2), PIA(), PIAN(), SecMI(k=10), Loss(), PFAMI(timesteps=(0, 50), lambdas=(0.9, 0.8))):
        seen.clear()
        captioned = attack.sweep(model, z, [20], keys=keys, cond=["a cat", "a dog"], batch_size=64)
        queried = {k for batch in seen for k in batch}
        assert queried == {caption_key("a cat"), caption_key("a dog")}, attack.name
        empty = attack.sweep(model, z, [20], keys=keys, batch_size=64)
        assert torch.isfinite(captioned).all() and not torch.equal(captioned, empty), attack.name


def test_each_image_is_encoded_once_per_model(folders, images):
    folder, _ = images
    model = load_model(folders["sd1"])
    encoded = []
    original = model.vae.encode
    model.vae.encode = lambda x: (encoded.append(len(x)), original(x))[1]
    x = _pixels(folder, sorted(CAPTIONS))
    first = model.encode(x[:2])
    again = model.encode(torch.cat([x[1:2], x[:1], x[2:3], x[2:3]]))
    assert encoded == [2, 1]  # the repeat of a known image costs nothing; a new one is encoded once
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0]) and torch.equal(again[2], again[3])


def test_a_text_encoder_saved_by_transformers_4_loads(folders, tmp_path):
    """Checkpoints saved by transformers 4 (every SD on the hub) name CLIPTextModel's weights
    text_model.* and carry the position ids, which transformers 5 computes instead of storing."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(folders["sd1"], tmp_path / "old-sd")
    weights = copy / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    state = {f"text_model.{k}": v for k, v in state.items()}
    state["text_model.embeddings.position_ids"] = torch.arange(tp.MAX_TOKENS).unsqueeze(0)
    save_file(state, str(weights))
    assert load_model(copy).fingerprint == load_model(folders["sd1"]).fingerprint
    state["text_model.embeddings.extra.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(ModelError, match="unexpected"):
        load_model(copy)


def test_a_vae_with_the_old_attention_names_loads(folders, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(folders["sd1"], tmp_path / "old-vae")
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(str(weights)).items():
        for new, former in old.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{former}.")
        state[key] = value
    assert any(".query." in k for k in state)
    save_file(state, str(weights))
    assert load_model(copy).fingerprint == load_model(folders["sd1"]).fingerprint


def test_a_dit_named_transformer2dmodel_loads_as_a_dit(folders, tmp_path):
    """The hub's DiT folders name their transformer Transformer2DModel with norm_type ada_norm_zero."""
    import shutil

    copy = shutil.copytree(folders["dit"], tmp_path / "old-dit")
    config_path = copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(_class_name="Transformer2DModel", cross_attention_dim=None, num_vector_embeds=None,
                  use_linear_projection=False, only_cross_attention=False)
    config_path.write_text(json.dumps(config))
    old, new = load_model(copy), load_model(folders["dit"])
    z = new.encode(torch.rand(2, 3, tp.IMAGE, tp.IMAGE) * 2 - 1)
    torch.testing.assert_close(SimA().statistic(old, z, 50, cond=["1", "2"]), SimA().statistic(new, z, 50, cond=["1", "2"]))
    config_path.write_text(json.dumps({**config, "norm_type": "layer_norm"}))
    with pytest.raises(ModelError, match="not a class-conditional"):
        load_model(copy)


def test_one_audit_reports_caption_and_empty_conditions_in_the_card(folders, images, capsys, tmp_path):
    folder, table = images
    members, nonmembers = _member_folders(folder, tmp_path)
    card = tmp_path / "README.md"
    results = _run(capsys, "audit", "--model", str(folders["sd1"]), "--members", str(members), "--nonmembers",
                   str(nonmembers), "--captions", str(table), "--condition", "caption,empty", "--attack", "sima,gap",
                   "--timesteps", "20", "--bootstrap", "0", "--card", str(card), "--out", str(tmp_path / "out"))
    assert results["comparisons"] == []  # no bootstrap resamples, so no paired comparison
    results = results["audits"]
    assert [(r["attack"], r["extra"]["condition"]) for r in results] == [("sima", "caption"), ("gap", "caption"), ("sima", "empty")]
    text = card.read_text()
    assert "| attack | condition | chosen t |" in text and "| gap | caption | 20 |" in text and "| sima | empty | 20 |" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gap-caption", "sima-caption", "sima-empty"]
    assert "takes one --condition" in _fail(capsys, "score", "--model", str(folders["sd1"]), "--captions", str(table),
                                            "--condition", "caption,empty", str(folder / "a.png"))
    assert "--condition takes" in _fail(capsys, "score", "--model", str(folders["sd1"]), "--condition", "both",
                                        str(folder / "a.png"))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "tokenizer" / "vocab.json").write_text("[1, 2]"), "non-negative whole numbers"),
    (lambda f: (f / "tokenizer" / "merges.txt").write_text("#version: 0.2\na b c\n"), "line 2"),
    (lambda f: (f / "tokenizer" / "vocab.json").unlink(), "Missing .*vocab.json"),
    (lambda f: (f / "model_index.json").write_text(json.dumps(
        {**json.loads((f / "model_index.json").read_text()), "text_encoder": ["evil", "RemoteCodeModel"]})), "not supported"),
    (lambda f: (f / "text_encoder" / "model.safetensors").write_bytes(b"not safetensors"), "safetensors"),
])
def test_a_broken_pipeline_folder_is_refused_with_one_line(folders, tmp_path, damage, message):
    import shutil

    copy = shutil.copytree(folders["sd1"], tmp_path / "broken")
    damage(copy)
    with pytest.raises(ModelError, match=message) as error:
        load_model(copy)
    assert "\n" not in str(error.value)


def test_a_pipeline_is_sized_before_loading_and_refused_over_the_memory_budget(folders, monkeypatch):
    from core.models.loading import BUDGET_ENV
    from core.models.registry import plan_model

    plan = plan_model(folders["sdxl"])
    assert set(plan.components) == {"vae", "unet", "text_encoder", "text_encoder_2"}
    assert plan.parameters == load_model(folders["sdxl"]).parameter_count()
    monkeypatch.setenv(BUDGET_ENV, str(plan.nbytes // 2))
    with pytest.raises(ModelError, match="memory|budget") as error:
        load_model(folders["sdxl"])
    assert "\n" not in str(error.value)


def test_the_collection_test_refuses_captions_rather_than_ignoring_them(folders, images, capsys):
    folder, table = images
    assert "empty prompt only" in _fail(capsys, "collection", "--model", str(folders["sd1"]), "--captions", str(table),
                                        "--images", str(folder / "a.png"), "--reference", str(folder / "b.png"))


def test_a_model_slower_than_the_pass_limit_is_calibrated_at_batch_one(folders, monkeypatch):
    """A Stable Diffusion UNet on a CPU takes ~30 s a sample: calibration must not time batches of 8."""
    from core import batching

    model = load_model(folders["sd1"])
    monkeypatch.setattr(batching, "MAX_PASS_SECONDS", 0.0)
    assert set(batching.measure(model)) == {1}
    monkeypatch.setattr(batching, "MAX_PASS_SECONDS", 60.0)
    assert set(batching.measure(model, candidates=(2, 4), repeats=1)) == {2, 4}


def test_a_single_string_is_refused_where_one_caption_per_image_is_needed(folders, images):
    from core.audit import image_statistics

    folder, _ = images
    model = load_model(folders["sd1"])
    with pytest.raises(DataError, match="not a single string"):
        image_statistics(model, _pixels(folder, ["a.png", "b.png"]), SimA(), [10], cond="ab", batch_size=8)
