"""Resolve a model spec (bundled demo name, local folder or hub id) to a DiffusionModel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import ModelError
from core.models.base import DiffusionModel

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEMO_DIR = ASSETS / "models"
MANIFEST = "manifest.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def demo_names() -> list[str]:
    """Names of the bundled demo models (folders under assets/models with a manifest)."""
    if not DEMO_DIR.is_dir():
        return []
    return sorted(p.name for p in DEMO_DIR.iterdir() if (p / MANIFEST).is_file())


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}).") from None


def load_model(spec: str | Path | DiffusionModel, *, device: str = "cpu", allow_pickle: bool = False, **kwargs) -> DiffusionModel:
    """A DiffusionModel from a bundled demo name, a local diffusers folder, or a hub id.

    Pickle-based weights load only with ``allow_pickle=True``; remote code never runs.
    Extra keyword arguments go to the adapter (e.g. ``scaling_factor`` for latent models).
    """
    if isinstance(spec, DiffusionModel):
        return spec
    text = str(spec).strip()
    if not text:
        raise ModelError("No model given: name a bundled demo, a diffusers folder or a hub id.")
    if text in demo_names():
        return load_folder(DEMO_DIR / text, device=device, allow_pickle=allow_pickle, **kwargs)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is a file; give the diffusers folder that holds the model's config.json.")
        return load_folder(path, device=device, allow_pickle=allow_pickle, **kwargs)
    if _HUB_ID.match(text) and not text.startswith((".", "/")):
        return load_folder(_download(text), device=device, allow_pickle=allow_pickle, name=text, **kwargs)
    demos = ", ".join(demo_names()) or "none installed"
    raise ModelError(f"{text!r} is not a bundled demo ({demos}), an existing folder, or a hub id like 'owner/name'.")


def load_folder(folder: Path, *, device: str = "cpu", allow_pickle: bool = False, **kwargs) -> DiffusionModel:
    manifest = read_manifest(folder)
    kwargs.setdefault("name", folder.name)
    if manifest is not None and manifest.get("kind") == "empirical":
        from core.models.empirical import EmpiricalDenoiser
        from core.datasets import split_images

        members, _ = split_images(manifest, "members")
        return EmpiricalDenoiser(members, name=kwargs["name"], manifest=manifest)
    if (folder / "vae").is_dir():
        from core.models.latent import LatentModel

        return LatentModel.from_folder(folder, allow_pickle=allow_pickle, manifest=manifest, device=device, **kwargs)
    from core.models.pixel import PixelModel

    return PixelModel.from_folder(folder, allow_pickle=allow_pickle, manifest=manifest, device=device, **kwargs)


def _download(repo_id: str) -> Path:
    """Fetch only configs and safetensors of a hub repo; a clear message when offline."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline mode, no network, unknown repo, gated repo...
        reason = type(exc).__name__
        raise ModelError(
            f"Could not fetch hub model {repo_id!r} ({reason}). If you are offline, download it on a "
            "connected machine and pass its folder instead; bundled demos always work offline."
        ) from None
