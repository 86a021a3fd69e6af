"""What a newcomer reads first: drawn before anything heavy (torch, the models) is imported.

The app's entrypoint shows this while the sidebar loads the model, and the Check page keeps it
at its top, so the first screen is never blank and says at once what the app can tell.
"""

from __future__ import annotations

import streamlit as st
from PIL import Image, ImageDraw

from core.models.registry import DEMO_DIR, demo_names, read_manifest

DATASETS = {"sklearn-digits": "handwritten digits", "cifar10-12k": "CIFAR-10 photos"}


def app_icon() -> Image.Image:
    """A magnifying glass over a pixel grid, drawn locally so the app fetches nothing."""
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    for i in range(4):
        for j in range(4):
            shade = 60 + 45 * ((i + j) % 3)
            draw.rectangle((6 + 9 * i, 6 + 9 * j, 13 + 9 * i, 13 + 9 * j), fill=(shade, shade, shade, 255))
    draw.ellipse((22, 22, 50, 50), outline=(194, 65, 12, 255), width=6)
    draw.line((46, 46, 60, 60), fill=(194, 65, 12, 255), width=8)
    return icon


def domains() -> dict[str, str]:
    """What the bundled demos were trained on, from their manifests: {"16×16 greyscale handwritten digits": "names"}."""
    found: dict[str, list[str]] = {}
    for name in demo_names():
        dataset = (read_manifest(DEMO_DIR / name) or {}).get("dataset") or {}
        size, channels = dataset.get("size"), dataset.get("channels")
        if not size or not channels:
            continue
        kind = "greyscale" if channels == 1 else "colour"
        what = DATASETS.get(dataset.get("name"), dataset.get("name") or "images")
        found.setdefault(f"{size}×{size} {kind} {what}", []).append(name)
    return {domain: ", ".join(names) for domain, names in found.items()}


def show() -> None:
    """The welcome: what the app can and cannot tell about an image, and what the demos know."""
    known = domains()
    demos = "; ".join(f"**{domain}** ({names})" for domain, names in known.items())
    st.markdown(
        "Was this picture used to train that diffusion model? Add an image: the app measures how the "
        "model's noise prediction treats it, compares that with images the model surely never saw, "
        "and gives a **p-value** and a **verdict** at the false-positive rate you choose."
    )
    st.info(
        "**What it can tell:** whether an image scores as member-like as few images the model never "
        "saw do (evidence, with a stated false-positive rate). **What it cannot tell:** that an image "
        "was *not* used (well-generalising models leak little), or anything about images unlike the "
        "model's training data: those get *this model cannot judge this image*."
        + (f"\n\n**The bundled demos only know {demos}.** For your own images, load your own model "
           "in the sidebar (a diffusers folder or a hub id)." if demos else ""),
        icon=":material/info:",
    )
