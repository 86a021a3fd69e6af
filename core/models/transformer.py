"""Class-conditional latent transformers (DiT): eps(z, t, y) for a class label y per image.

The denoiser is a ``DiTTransformer2DModel`` (older folders name it ``Transformer2DModel`` with
``norm_type`` "ada_norm_zero"; diffusers loads those as a DiT too) over the latents of an
``AutoencoderKL``. DiT learns its variance: it outputs twice the latent channels and the first
half is the noise (:func:`core.models.base.to_eps` keeps it). The unconditional prediction is
the one for the null class, the extra row of the label table that classifier-free guidance
trained: index ``num_embeds_ada_norm`` (1000 for the ImageNet DiTs, as their pipeline uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from core.conditioning import EMPTY_KEY, Conditioning, label_key
from core.errors import DataError, ModelError
from core.models import loading
from core.models.latent import LatentModel, check_latent_configs, plan_vae, planned_scaling, read_vae_config
from core.models.pixel import check_unet_config

DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


class ClassConditionalModel(LatentModel):
    """A DiT pipeline (vae/, transformer/, scheduler/) as a class-conditional noise predictor."""

    conditional = True
    condition_kind = "label"

    def __init__(self, vae, transformer, alphas_cumprod, *, labels: dict[str, int] | None = None, **kwargs):
        super().__init__(vae, transformer, alphas_cumprod, **kwargs)
        self.num_classes = int(transformer.config.num_embeds_ada_norm)
        rows = _label_rows(transformer)
        if rows is None or rows <= self.num_classes:
            raise ModelError(
                f"{self.name}: the transformer's label table has {rows} rows for {self.num_classes} classes, so it has no "
                "null class (it was trained without label dropout) and no unconditional prediction."
            )
        self.null_class = self.num_classes
        self.class_names = {k.strip().lower(): int(v) for k, v in (labels or {}).items()}

    @classmethod
    def plan(cls, folder: str | Path, *, allow_pickle: bool = False) -> loading.ModelPlan:
        """Check a DiT pipeline folder (vae/, transformer/, scheduler/) and size its networks,
        allocating nothing (see core.models.loading)."""
        import diffusers

        folder = Path(folder)
        vae_dir, dit_dir = folder / "vae", folder / "transformer"
        vae_config = read_vae_config(folder, ("AutoencoderKL",))
        config = loading.read_json(dit_dir / "config.json", root=folder)
        kind = config.get("_class_name", "DiTTransformer2DModel")
        if kind not in DIT_CLASSES or (kind == "Transformer2DModel" and config.get("norm_type") != "ada_norm_zero"):
            raise ModelError(
                f"{dit_dir / 'config.json'}: {kind!r} with norm_type {config.get('norm_type')!r} is not a class-conditional "
                "DiT; supported: DiTTransformer2DModel (or Transformer2DModel with norm_type 'ada_norm_zero')."
            )
        check_unet_config(config, dit_dir / "config.json")
        check_latent_configs(vae_config, config, str(vae_dir / "config.json"), str(dit_dir / "config.json"))
        components = {
            "vae": plan_vae(folder, vae_config, allow_pickle=allow_pickle),
            "transformer": loading.plan_component(diffusers.DiTTransformer2DModel, dit_dir, allow_pickle=allow_pickle,
                                                  root=folder, config=config),
        }
        return loading.ModelPlan(folder, components, *loading.read_schedule(folder))

    @classmethod
    def from_plan(cls, plan: loading.ModelPlan, *, scaling_factor: float | None = None, **kwargs) -> "ClassConditionalModel":
        """Load a planned folder once its bytes fit the memory budget."""
        index_path = plan.folder / "model_index.json"
        index = loading.read_json(index_path, root=plan.folder) if index_path.is_file() else {}
        labels = index.get("id2label")
        scaling = planned_scaling(plan, scaling_factor)
        modules = plan.materialise()
        kwargs.setdefault("name", plan.folder.name)
        return cls(
            modules["vae"], modules["transformer"], plan.alphas_cumprod,
            labels={str(v): int(k) for k, v in labels.items() if str(k).isdigit()} if isinstance(labels, dict) else None,
            scaling_factor=scaling, prediction_type=plan.prediction_type, **kwargs,
        )

    def _label(self, value: str) -> int:
        text = str(value).strip()
        if text.lower() in self.class_names:
            return self.class_names[text.lower()]
        try:
            label = int(text)
        except ValueError:
            raise DataError(
                f"Class label {text[:60]!r} is neither a number from 0 to {self.num_classes - 1} nor a class name of {self.name}."
            ) from None
        if not 0 <= label < self.num_classes:
            raise DataError(f"Class label {label} is out of range: {self.name} has classes 0 to {self.num_classes - 1}.")
        return label

    def condition(self, captions: Sequence[str]) -> Conditioning:
        """One class label per sample, as numbers ("207") or class names the pipeline lists."""
        labels = [self._label(c) for c in captions]
        return Conditioning({"class_labels": torch.tensor(labels, dtype=torch.long)}, [label_key(y) for y in labels])

    def empty_condition(self, n: int) -> Conditioning:
        """The null class for ``n`` samples: the model's unconditional prediction."""
        return Conditioning({"class_labels": torch.full((n,), self.null_class, dtype=torch.long)}, [EMPTY_KEY] * n)

    def _raw(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.unet(x, timestep=t, class_labels=cond.tensors["class_labels"]).sample


def _label_rows(transformer: torch.nn.Module) -> int | None:
    for name, module in transformer.named_modules():
        if name.endswith("class_embedder.embedding_table"):
            return int(module.num_embeddings)
    return None
