"""pytorch-ddpm checkpoints (the papers' ckpt.pt): flags, the original network, diffusers parity, CLI.

The reference below computes the original forward pass straight from a state dict with the
original parameter names, with torch.nn.functional and explicit attention: an implementation
independent of core.models.pytorch_ddpm's modules.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core import ModelError, load_model
from core.cli import main
from core.models.registry import plan_model
from core.models.pytorch_ddpm import Flags, PytorchDDPMUNet, read_flagfile, to_diffusers

CONVERTIBLE = Flags(T=1000, ch=32, ch_mult=(1, 2), attn=(1,), num_res_blocks=1, img_size=8)
ORIGINAL_ONLY = Flags(T=1000, ch=32, ch_mult=(2, 1), attn=(0,), num_res_blocks=1, img_size=8)  # ch_mult[0] != 1
# three levels, attention at two, two blocks a level, another schedule, and x0 prediction
VARIED = Flags(T=300, ch=32, ch_mult=(1, 1, 2), attn=(0, 2), num_res_blocks=2, img_size=8, beta_1=5e-4, beta_T=0.03,
               mean_type="xstart")


def reference_forward(state: dict, flags: Flags, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Ho et al.'s DDPM UNet computed from the original state-dict names, one operation at a time."""
    def norm(h, key):
        return F.group_norm(h, 32, state[f"{key}.weight"], state[f"{key}.bias"], eps=1e-5)

    def conv(h, key, stride=1):
        weight = state[f"{key}.weight"]
        return F.conv2d(h, weight, state[f"{key}.bias"], stride=stride, padding=weight.shape[-1] // 2)

    def linear(h, key):
        return h @ state[f"{key}.weight"].T + state[f"{key}.bias"]

    def attention(h, key):
        b, c, height, width = h.shape
        normed = norm(h, f"{key}.group_norm")
        q, k, v = (conv(normed, f"{key}.{p}").reshape(b, c, -1) for p in ("proj_q", "proj_k", "proj_v"))
        logits = q.transpose(1, 2) @ k / math.sqrt(c)                     # [b, positions, positions]
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        mixed = (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(b, c, height, width)
        return h + conv(mixed, f"{key}.proj")

    def resblock(h, key, temb, with_attention):
        y = conv(F.silu(norm(h, f"{key}.block1.0")), f"{key}.block1.2")
        y = y + linear(F.silu(temb), f"{key}.temb_proj.1")[:, :, None, None]
        y = conv(F.silu(norm(y, f"{key}.block2.0")), f"{key}.block2.3")  # dropout: identity at evaluation
        y = y + (conv(h, f"{key}.shortcut") if f"{key}.shortcut.weight" in state else h)
        return attention(y, f"{key}.attn") if with_attention else y

    table = state["time_embedding.timembedding.0.weight"]
    temb = linear(F.silu(linear(table[t], "time_embedding.timembedding.1")), "time_embedding.timembedding.3")
    h = conv(x, "head")
    skips, index, levels = [h], 0, len(flags.ch_mult)
    for level in range(levels):
        for _ in range(flags.num_res_blocks):
            h = resblock(h, f"downblocks.{index}", temb, level in flags.attn)
            skips.append(h)
            index += 1
        if level < levels - 1:
            h = conv(h, f"downblocks.{index}.main", stride=2)
            skips.append(h)
            index += 1
    h = resblock(h, "middleblocks.0", temb, True)
    h = resblock(h, "middleblocks.1", temb, False)
    index = 0
    for level in reversed(range(levels)):
        for _ in range(flags.num_res_blocks + 1):
            h = resblock(torch.cat([h, skips.pop()], 1), f"upblocks.{index}", temb, level in flags.attn)
            index += 1
        if level > 0:
            h = conv(h.repeat_interleave(2, 2).repeat_interleave(2, 3), f"upblocks.{index}.main")
            index += 1
    assert not skips
    return conv(F.silu(norm(h, "tail.0")), "tail.2")


def random_state(flags: Flags, seed: int) -> dict:
    """Weights in the original layout, every one random (zero biases would hide swapped names),
    except the sinusoid table, which the original keeps frozen."""
    generator = torch.Generator().manual_seed(seed)
    state = PytorchDDPMUNet(flags).state_dict()
    for key, value in state.items():
        noise = torch.randn(value.shape, generator=generator)
        if key == "time_embedding.timembedding.0.weight":
            continue
        if value.dim() > 1:
            state[key] = noise / math.sqrt(value[0].numel())
        else:  # GroupNorm scales around 1, every bias around 0
            state[key] = noise * 0.3 + (1.0 if key.endswith(".weight") else 0.0)
    return state


def absl_flagfile(flags: Flags) -> str:
    """What pytorch-ddpm's FLAGS.append_flags_into_file writes: every flag, lists one item a line."""
    lines = ["--notrain", "--noeval", f"--ch={flags.ch}", *(f"--ch_mult={m}" for m in flags.ch_mult),
             *(f"--attn={a}" for a in flags.attn), f"--num_res_blocks={flags.num_res_blocks}", f"--dropout={flags.dropout}",
             f"--beta_1={flags.beta_1}", f"--beta_T={flags.beta_T}", f"--T={flags.T}", f"--mean_type={flags.mean_type}",
             "--var_type=fixedlarge", "--lr=0.0002", "--grad_clip=1.0", "--total_steps=800000", f"--img_size={flags.img_size}",
             "--warmup=5000", "--batch_size=128", "--ema_decay=0.9999", "--noparallel", "--logdir=./logs/DDPM_CIFAR10_EPS",
             "--sample_size=64", "--fid_cache=./stats/cifar10.train.npz"]
    return "\n".join(lines) + "\n"


def write_checkpoint(folder, flags: Flags, *, prefix: str = "", flagfile: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    net, ema = random_state(flags, 1), random_state(flags, 2)
    ckpt = {"net_model": {prefix + k: v for k, v in net.items()}, "ema_model": {prefix + k: v for k, v in ema.items()},
            "sched": {"base_lrs": [0.0002], "last_epoch": 10, "lr_lambdas": [None]},
            "optim": {"state": {}, "param_groups": [{"lr": 0.0002, "params": [0, 1]}]}, "step": 10,
            "x_T": torch.randn(2, 3, flags.img_size, flags.img_size)}
    torch.save(ckpt, folder / "ckpt.pt")
    if flagfile:
        (folder / "flagfile.txt").write_text(absl_flagfile(flags))
    return folder / "ckpt.pt", {"net": net, "ema": ema}


@pytest.fixture
def images(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    paths = []
    for i, picture in enumerate(pixels):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(picture).save(paths[-1])
    x0 = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32) / 255 * 2 - 1
    return [str(p) for p in paths], x0


def test_the_module_has_the_original_state_dict_layout():
    state = PytorchDDPMUNet(CONVERTIBLE).state_dict()
    # counted by hand: time 5, head 2, down 10 + 2 + 22, middle 20 + 10, up 22 + 22 + 2 + 12 + 12, tail 4
    assert len(state) == 145
    shapes = {"time_embedding.timembedding.0.weight": (1000, 32), "time_embedding.timembedding.1.weight": (128, 32),
              "downblocks.0.block1.2.weight": (32, 32, 3, 3), "downblocks.1.main.weight": (32, 32, 3, 3),
              "downblocks.2.shortcut.weight": (64, 32, 1, 1), "downblocks.2.attn.proj_q.weight": (64, 64, 1, 1),
              "middleblocks.0.attn.proj.bias": (64,), "upblocks.0.block1.0.weight": (128,),
              "upblocks.1.temb_proj.1.weight": (64, 128), "upblocks.2.main.weight": (64, 64, 3, 3),
              "upblocks.3.block2.3.weight": (32, 32, 3, 3), "upblocks.4.shortcut.weight": (32, 64, 1, 1),
              "tail.0.weight": (32,), "tail.2.weight": (3, 32, 3, 3)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert not any(k.startswith("middleblocks.1.attn") for k in state)
    # the stored table is the sinusoid sin/cos(t / 10000^(2i/ch)), interleaved
    table, t, i = state["time_embedding.timembedding.0.weight"], 700, 3
    assert abs(float(table[t, 2 * i]) - math.sin(t / 10000 ** (2 * i / 32))) < 1e-4
    assert abs(float(table[t, 2 * i + 1]) - math.cos(t / 10000 ** (2 * i / 32))) < 1e-4


@pytest.mark.parametrize("flags", [CONVERTIBLE, ORIGINAL_ONLY], ids=["convertible", "original-only"])
def test_module_and_diffusers_conversion_match_the_original_forward_pass(flags):
    state = random_state(flags, 3)
    net = PytorchDDPMUNet(flags).eval()
    net.load_state_dict(state)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 10, 500, 999])
    expected = reference_forward(state, flags, x, t)
    with torch.no_grad():
        got = net(x, t)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    unet = to_diffusers(net, flags)
    if not flags.diffusers_can_represent:
        assert unet is None
        return
    with torch.no_grad():
        converted = unet(x, t).sample
    assert (converted - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_flagfile_reads_what_absl_writes_and_comma_lists(tmp_path):
    path = tmp_path / "flagfile.txt"
    path.write_text("# written by absl\n" + absl_flagfile(CONVERTIBLE))
    assert read_flagfile(path) == CONVERTIBLE
    path.write_text("--ch=64\n--ch_mult=1,2,2\n--attn=0\n--attn=2\n--img_size=16\n--mean_type=xstart\n")
    flags = read_flagfile(path)
    assert (flags.ch, flags.ch_mult, flags.attn, flags.img_size, flags.prediction_type) == (64, (1, 2, 2), (0, 2), 16, "sample")
    assert (flags.num_res_blocks, flags.T, flags.beta_1) == (2, 1000, 1e-4)  # absent flags keep the original defaults


@pytest.mark.parametrize("text, message", [
    ("--ch=48\n", "multiple of 32"),
    ("--ch_mult=1\n--ch_mult=2\n--attn=2\n", "--attn names level 2"),
    ("--img_size=30\n", "not divisible by 8"),
    ("--mean_type=xprev\n", "xprev"),
    ("--ch=wide\n", "whole number"),
    ("--flagfile=other.txt\n", "nested flag files"),
    ("--ch 64\n", "should read --ch=64"),
])
def test_flagfile_problems_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "flagfile.txt"
    path.write_text(text)
    with pytest.raises(ModelError, match=message) as caught:
        read_flagfile(path)
    assert "\n" not in str(caught.value)


def _statistic(state, flags, x0, t):
    """SimA's ||eps||_4^4 at a clean input; an x0-predicting network's output is turned into eps
    with the run's own schedule (float32 linspace of betas, as the original code builds it)."""
    out = reference_forward(state, flags, x0, torch.full((len(x0),), t)).to(torch.float64)
    if flags.mean_type == "xstart":
        betas = torch.linspace(flags.beta_1, flags.beta_T, flags.T).double()
        abar = torch.cumprod(1 - betas, 0)[t]
        out = (x0.double() - abar.sqrt() * out) / (1 - abar).sqrt()
    return out.abs().pow(4).flatten(1).sum(1)


@pytest.mark.parametrize("flags, prefix", [(CONVERTIBLE, "module."), (ORIGINAL_ONLY, ""), (VARIED, "")],
                         ids=["convertible", "original-only", "varied"])
def test_sima_score_on_a_checkpoint_gives_the_original_statistic(tmp_path, images, capsys, flags, prefix):
    ckpt, states = write_checkpoint(tmp_path / "run", flags, prefix=prefix)
    paths, x0 = images
    expected = {w: _statistic(states[w], flags, x0, 100).to(torch.float64) for w in ("ema", "net")}
    assert not torch.allclose(expected["ema"], expected["net"], rtol=1e-2)  # so a mix-up of the two would show
    for weights in ("ema", "net"):
        argv = ["score", "--model", str(ckpt), "--allow-pickle", "--t", "100", "--json", "--no-cache", "--batch-size", "8", *paths]
        assert main(argv + (["--weights", weights] if weights == "net" else [])) == 0
        got = torch.tensor([r["statistic"] for r in json.loads(capsys.readouterr().out)], dtype=torch.float64)
        assert torch.allclose(got, expected[weights], rtol=1e-3, atol=0), (weights, got, expected[weights])


def test_convert_writes_a_folder_that_loads_without_pickle(tmp_path, images, capsys):
    ckpt, _ = write_checkpoint(tmp_path / "run", CONVERTIBLE)
    out = tmp_path / "converted"
    assert main(["convert", str(ckpt), str(out), "--allow-pickle"]) == 0
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    assert json.loads((out / "converted_from.json").read_text())["weights"] == "ema"
    direct = load_model(ckpt, allow_pickle=True)
    folder = load_model(out)  # no allow_pickle needed
    x = images[1]
    assert torch.allclose(folder.eps(x, 10), direct.eps(x, 10), atol=1e-6)
    assert torch.equal(folder.alphas_cumprod, direct.alphas_cumprod)
    assert main(["convert", str(ckpt), str(out), "--allow-pickle"]) == 2  # never overwrites


def test_checkpoint_refusals_are_one_line(tmp_path, images, capsys):
    ckpt, _ = write_checkpoint(tmp_path / "run", CONVERTIBLE)
    paths, _ = images

    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.strip().splitlines()

    assert "--allow-pickle" in error(["score", "--model", str(ckpt), *paths])[-1]
    assert "sima convert" in error(["convert", str(ckpt), str(tmp_path / "out")])[-1]
    with pytest.raises(ModelError, match="sima convert"):  # what the app asks before loading
        plan_model(ckpt)
    torch.save({"net_model": random_state(CONVERTIBLE, 5)}, tmp_path / "run" / "ckpt.pt")
    assert "--weights net" in error(["score", "--model", str(ckpt), "--allow-pickle", *paths])[-1]
    (tmp_path / "run" / "flagfile.txt").write_text(absl_flagfile(ORIGINAL_ONLY))
    assert "do not fit the architecture" in error(["score", "--model", str(ckpt), "--allow-pickle", "--weights", "net", *paths])[-1]
    (tmp_path / "run" / "flagfile.txt").unlink()
    lines = error(["score", "--model", str(ckpt), "--allow-pickle", "--weights", "net", *paths])
    assert lines[0].startswith("warning: No flagfile.txt") and "CIFAR-10" in lines[0]
    assert "published CIFAR-10 defaults" in lines[-1]
    assert "applies to pytorch-ddpm" in error(["score", "--model", str(tmp_path), "--weights", "net", *paths])[-1]
