"""Text-to-image latent models: Stable Diffusion 1.x / 2.x and SDXL, with optional LoRA adapters.

eps(z, t, c) is the ``UNet2DConditionModel``'s prediction on the VAE latent z (see
:mod:`core.models.latent`: scaling factor times posterior mean minus shift) given the prompt
conditioning c, built exactly as the diffusers pipelines build it (docs/methods.md, "Conditional
models"):

- SD 1.x / 2.x: the caption tokenized and padded to the tokenizer's length (77), through the
  CLIP text encoder; c is its last hidden state. v-prediction models (SD 2.x 768) are converted
  to eps like any v-model.
- SDXL: the caption through both encoders; their penultimate hidden states are concatenated,
  the second encoder's projected pooled output is ``text_embeds``, and ``time_ids`` are
  (H, W, 0, 0, H, W) for an H x W image. Its empty condition is zeros when the pipeline says
  ``force_zeros_for_empty_prompt`` (the default), as its pipeline does for an absent prompt.

Components are built from their configs and loaded through :mod:`core.models.loading`
(safetensors, strict keys, no remote code); tokenizers are read from vocab.json and merges.txt
with size limits. Prompt embeddings are computed once per distinct caption and kept in the
model object (bounded), so a set where many images share a caption embeds it once.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch

from core.conditioning import EMPTY_KEY, Conditioning, caption_key
from core.errors import ModelError
from core.hashing import fingerprint_tensors
from core.models import loading
from core.models.latent import LatentModel, check_latent_configs, plan_vae, planned_scaling, read_vae_config
from core.models.pixel import check_unet_config

#: The text encoder classes a pipeline folder may name; nothing else is ever instantiated.
TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")
#: Larger tokenizer files are refused before they are parsed (CLIP's vocab.json is 1.6 MB).
MAX_TOKENIZER_BYTES = 16 * 1024 * 1024
#: Bytes of prompt embeddings a model object keeps (least recently used captions go first):
#: 2,000 SD 1.5 captions, 800 SDXL ones.
EMBEDDING_CACHE_BYTES = 512 * 2**20
#: Distinct captions embedded together in one text-encoder call.
TEXT_BATCH = 64


def _transformers_factory(cls: type):
    """Build a transformers model from its config dict, as :func:`core.models.loading.plan_component`
    builds any network (on the meta device first, then from the checked weights)."""
    return lambda config: cls(cls.config_class.from_dict(dict(config)))


def clip_names(names: list[str], meta: torch.nn.Module) -> dict[str, str]:
    """transformers 5 dropped the ``text_model.`` level of CLIPTextModel's tensor names that
    checkpoints saved by transformers 4 (every Stable Diffusion on the hub) carry."""
    prefix = "text_model."
    if any(k.startswith(prefix) for k in meta.state_dict()):
        return {n: n for n in names}
    return {n: n.removeprefix(prefix) for n in names}


def _text_encoder_class(name: str, folder: Path) -> type:
    import transformers

    if name not in TEXT_ENCODERS:
        raise ModelError(f"{folder}: text encoder class {name!r} is not supported; supported: {', '.join(TEXT_ENCODERS)}.")
    return getattr(transformers, name)


def _text(path: Path, root: Path) -> str:
    try:
        return loading.read_capped(path, MAX_TOKENIZER_BYTES, root=root).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not UTF-8 text; re-save the tokenizer with transformers.") from None


def _token(value: Any, path: Path, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise ModelError(f"{path}: field {field!r} must be a token string, found {value!r}.")
    return value


def read_tokenizer(folder: Path, *, root: Path | None = None):
    """A CLIP tokenizer from ``folder``'s vocab.json and merges.txt (plus its special tokens
    and length from tokenizer_config.json / special_tokens_map.json), read with size limits;
    no tokenizer code from the folder ever runs. Returns (tokenizer, digest of its files)."""
    from transformers import CLIPTokenizer

    root = folder if root is None else root
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise ModelError(f"Missing {path}: a tokenizer folder needs vocab.json and merges.txt.")
    vocab_text, merges_text = _text(vocab_path, root), _text(merges_path, root)
    try:
        vocab = json.loads(vocab_text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{vocab_path} is not valid JSON ({exc}).") from None
    if not isinstance(vocab, dict) or not vocab or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in vocab.items()
    ):
        raise ModelError(f"{vocab_path} must map tokens to non-negative whole numbers.")
    merges = []
    for number, line in enumerate(merges_text.splitlines(), start=1):
        if not line.strip() or (number == 1 and line.startswith("#")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ModelError(f"{merges_path}, line {number}: a merge is two tokens separated by one space.")
        merges.append((parts[0], parts[1]))
    settings: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            settings.update(loading.read_json(folder / name, root=root))
    tokens = {f: _token(settings.get(f), folder, f) for f in ("bos_token", "eos_token", "unk_token", "pad_token")}
    tokens = {f: v for f, v in tokens.items() if v is not None}
    length = settings.get("model_max_length", 77)
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ModelError(f"{folder}: 'model_max_length' must be a whole number >= 2, found {length!r}.")
    try:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=length, **tokens)
    except Exception as exc:  # the tokenizers library raises its own types for inconsistent files
        raise ModelError(f"{folder}: the tokenizer could not be built ({type(exc).__name__}: {exc}).") from None
    missing = [t for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) if t not in vocab]
    if missing:
        raise ModelError(f"{vocab_path} lacks the special tokens {missing}; the tokenizer files are incomplete.")
    digest = hashlib.sha256("\0".join([vocab_text, merges_text, json.dumps(tokens, sort_keys=True), str(length)])
                            .encode("utf-8")).hexdigest()
    return tokenizer, digest


def _index(folder: Path) -> dict:
    path = folder / "model_index.json"
    return loading.read_json(path, root=folder) if path.is_file() else {}


def _encoder_name(folder: Path, component: str, default: str) -> str:
    """The class a pipeline names for a text encoder (model_index.json, else the config's architectures)."""
    entry = _index(folder).get(component)
    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    archs = loading.read_json(folder / component / "config.json", root=folder).get("architectures")
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else default


def _pairs(folder: Path) -> list[tuple[str, str]]:
    """(text encoder, tokenizer) folder names: one pair for SD 1.x / 2.x, two for SDXL."""
    xl = (folder / "text_encoder_2").is_dir() or _index(folder).get("_class_name") == "StableDiffusionXLPipeline"
    return [("text_encoder", "tokenizer")] + ([("text_encoder_2", "tokenizer_2")] if xl else [])


class TextToImageModel(LatentModel):
    """A Stable Diffusion (1.x, 2.x) or SDXL pipeline as a conditional noise predictor.

    ``text_encoders`` and ``tokenizers`` are lists of one (SD) or two (SDXL) aligned entries.
    """

    conditional = True
    condition_kind = "caption"

    def __init__(
        self,
        vae: torch.nn.Module,
        unet: torch.nn.Module,
        text_encoders: Sequence[torch.nn.Module],
        tokenizers: Sequence[Any],
        alphas_cumprod: torch.Tensor,
        *,
        xl: bool = False,
        force_zeros_for_empty_prompt: bool = True,
        tokenizer_digests: Sequence[str] = (),
        lora: dict | None = None,
        **kwargs,
    ):
        super().__init__(vae, unet, alphas_cumprod, **kwargs)
        if len(text_encoders) != len(tokenizers) or not text_encoders:
            raise ModelError("A text-to-image model needs one tokenizer per text encoder.")
        self.text_encoders = [te.eval().requires_grad_(False).to(self.device) for te in text_encoders]
        self.tokenizers = list(tokenizers)
        self.xl = xl
        self.force_zeros = bool(force_zeros_for_empty_prompt) and xl
        self.tokenizer_digests = list(tokenizer_digests)
        self.lora = lora
        self._embeddings: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        if lora:
            self.name = f"{self.name} + LoRA {lora['file']} (scale {lora['scale']:g})"
        if xl:
            self._check_xl()

    # --- loading ---------------------------------------------------------------------

    @classmethod
    def plan(cls, folder: str | Path, *, allow_pickle: bool = False) -> loading.ModelPlan:
        """Check a Stable Diffusion / SDXL pipeline folder (vae/, unet/, text_encoder/, tokenizer/,
        for SDXL also text_encoder_2/ and tokenizer_2/, scheduler/) and size its networks,
        allocating nothing (see core.models.loading)."""
        import diffusers

        folder = Path(folder)
        pairs = _pairs(folder)
        for encoder, tokenizer in pairs:
            for part in (encoder, tokenizer):
                if not (folder / part).is_dir():
                    kind = "SDXL" if len(pairs) == 2 else "Stable Diffusion"
                    raise ModelError(f"{folder} has no {part}/; a {kind} pipeline folder needs it.")
            for name in ("vocab.json", "merges.txt"):
                loading.check_text_file(folder / tokenizer / name, MAX_TOKENIZER_BYTES, root=folder)
        vae_dir, unet_dir = folder / "vae", folder / "unet"
        vae_config = read_vae_config(folder, ("AutoencoderKL",))
        unet_config = loading.read_json(unet_dir / "config.json", root=folder)
        check_unet_config(unet_config, unet_dir / "config.json")
        check_latent_configs(vae_config, unet_config, str(vae_dir / "config.json"), str(unet_dir / "config.json"))
        components = {
            "vae": plan_vae(folder, vae_config, allow_pickle=allow_pickle),
            "unet": loading.plan_component(diffusers.UNet2DConditionModel, unet_dir, allow_pickle=allow_pickle,
                                           root=folder, config=unet_config),
        }
        for encoder, _ in pairs:
            default = "CLIPTextModelWithProjection" if encoder == "text_encoder_2" else "CLIPTextModel"
            text_cls = _text_encoder_class(_encoder_name(folder, encoder, default), folder / encoder)
            components[encoder] = loading.plan_component(text_cls, folder / encoder, allow_pickle=allow_pickle, root=folder,
                                                         factory=_transformers_factory(text_cls), rename=clip_names)
        return loading.ModelPlan(folder, components, *loading.read_schedule(folder))

    @classmethod
    def from_plan(cls, plan: loading.ModelPlan, *, scaling_factor: float | None = None,
                  lora: str | Path | None = None, lora_scale: float = 1.0, **kwargs) -> "TextToImageModel":
        """Load a planned folder once its bytes fit the memory budget; ``lora`` adds an adapter."""
        folder = plan.folder
        pairs = _pairs(folder)
        scaling = planned_scaling(plan, scaling_factor)
        modules = plan.materialise()
        tokenizers, digests = zip(*(read_tokenizer(folder / tokenizer, root=folder) for _, tokenizer in pairs))
        encoders = [modules[encoder] for encoder, _ in pairs]
        lora_info = None
        if lora is not None:
            from core.models.lora import load_lora

            lora_info = load_lora(lora, modules["unet"], encoders, xl=len(pairs) == 2, scale=lora_scale)
        kwargs.setdefault("name", folder.name)
        return cls(
            modules["vae"], modules["unet"], encoders, list(tokenizers), plan.alphas_cumprod,
            xl=len(pairs) == 2,
            force_zeros_for_empty_prompt=_index(folder).get("force_zeros_for_empty_prompt", True),
            tokenizer_digests=list(digests),
            lora=lora_info,
            scaling_factor=scaling,
            prediction_type=plan.prediction_type,
            **kwargs,
        )

    def _check_xl(self) -> None:
        """SDXL's added embedding must take the six time ids and the pooled text embedding."""
        config = self.unet.config
        if config.get("addition_embed_type") != "text_time":
            raise ModelError(f"{self.name}: an SDXL UNet needs addition_embed_type 'text_time', found {config.get('addition_embed_type')!r}.")
        passed = config.addition_time_embed_dim * 6 + self.text_encoders[-1].config.projection_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ModelError(
                f"{self.name}: the UNet's added embedding takes {expected} values but six time ids and the second "
                f"text encoder's projection give {passed}; the UNet and text encoder come from different models."
            )

    # --- conditioning ----------------------------------------------------------------

    def _encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Prompt tensors for ``texts`` as the pipeline's encode_prompt builds them (one row each)."""
        hidden, pooled = [], None
        with torch.inference_mode():
            for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
                length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
                tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
                ids = tokens.input_ids.to(self.device)
                if not self.xl:
                    mask = tokens.attention_mask.to(self.device) if getattr(encoder.config, "use_attention_mask", False) else None
                    hidden.append(encoder(ids, attention_mask=mask)[0])
                    continue
                out = encoder(ids, output_hidden_states=True)
                pooled = out[0]  # the last encoder's projected pooled output, as in the pipeline
                hidden.append(out.hidden_states[-2])
        tensors = {"encoder_hidden_states": torch.cat(hidden, dim=-1).float().cpu()}
        if self.xl:
            _, h, w = self.image_shape
            tensors["text_embeds"] = pooled.float().cpu()
            tensors["time_ids"] = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).expand(len(texts), 6).clone()
        return tensors

    def _cached(self, keys: list[str], make) -> dict[str, torch.Tensor]:
        """Stack per-key tensors, computing the missing distinct keys in one batch with ``make``."""
        missing = list(dict.fromkeys(k for k in keys if k not in self._embeddings))
        for start in range(0, len(missing), TEXT_BATCH):  # a bounded batch through the text encoders
            part = missing[start:start + TEXT_BATCH]
            fresh = make(part)
            for j, key in enumerate(part):
                self._embeddings[key] = {name: v[j:j + 1] for name, v in fresh.items()}
        for key in keys:
            self._embeddings.move_to_end(key)
        rows = [self._embeddings[k] for k in keys]
        out = {name: torch.cat([r[name] for r in rows]) for name in rows[0]}
        per_entry = sum(v.numel() * v.element_size() for v in rows[0].values())
        while len(self._embeddings) > max(len(set(keys)), EMBEDDING_CACHE_BYTES // per_entry):
            self._embeddings.popitem(last=False)
        return out

    def condition(self, captions: Sequence[str]) -> Conditioning:
        """The prompt conditioning of one caption per sample; each distinct caption is embedded once."""
        texts = [str(c) for c in captions]
        if not texts:
            raise ModelError("No captions given.")
        keys = [caption_key(t) for t in texts]
        by_key = dict(zip(keys, texts))
        tensors = self._cached(keys, lambda missing: self._encode_texts([by_key[k] for k in missing]))
        return Conditioning(tensors, keys, texts)

    def empty_condition(self, n: int) -> Conditioning:
        """The empty prompt for ``n`` samples: the embedding of "" (zeros for SDXL pipelines
        with force_zeros_for_empty_prompt, as their pipeline uses for an absent prompt)."""

        def make(_):
            tensors = self._encode_texts([""])
            if self.force_zeros:
                tensors["encoder_hidden_states"] = torch.zeros_like(tensors["encoder_hidden_states"])
                tensors["text_embeds"] = torch.zeros_like(tensors["text_embeds"])
            return tensors

        one = self._cached([EMPTY_KEY], make)
        return Conditioning({k: v.expand(n, *v.shape[1:]).clone() for k, v in one.items()}, [EMPTY_KEY] * n, [""] * n)

    def _raw(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        dtype = self.unet.dtype
        tensors = {k: v.to(dtype) for k, v in cond.tensors.items()}
        added = {"text_embeds": tensors["text_embeds"], "time_ids": tensors["time_ids"]} if self.xl else None
        return self.unet(x.to(dtype), t, encoder_hidden_states=tensors["encoder_hidden_states"],
                         added_cond_kwargs=added).sample.float()

    # --- identity --------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            tensors = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
            tensors.update({f"unet.{k}": v for k, v in self.unet.state_dict().items()})
            for i, encoder in enumerate(self.text_encoders):
                tensors.update({f"text{i}.{k}": v for k, v in encoder.state_dict().items()})
            config = (dict(self.vae.config), dict(self.unet.config), [e.config.to_dict() for e in self.text_encoders],
                      self.tokenizer_digests, self.prediction_type, self.scaling_factor, self.force_zeros,
                      self.alphas_cumprod.tolist(), self.lora)
            self._fingerprint = fingerprint_tensors(tensors, config)
        return self._fingerprint

    def parameter_count(self) -> int:
        return super().parameter_count() + sum(p.numel() for e in self.text_encoders for p in e.parameters())
