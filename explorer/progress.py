"""Progress bars for long work: core's ``progress(done, total)`` drawn as a st.progress bar."""

from __future__ import annotations

import time
from typing import Callable

import streamlit as st

Update = Callable[[int, int], None]


def progress_bar(text: str, unit: str = "") -> tuple[Update, Callable[[], None]]:
    """(update, close) for a st.progress bar with a rate-based time-left estimate.

    ``unit`` names what is counted (e.g. "image-timestep pairs"). Items already done at the
    first call (served by the score cache) are not counted as work in the estimate.
    """
    bar = st.progress(0.0, text=text)
    start = time.perf_counter()
    first: list[int] = []

    def update(done: int, total: int) -> None:
        if not first:
            first.append(done)
        elapsed = time.perf_counter() - start
        worked = done - first[0]
        eta = ""
        if worked > 0 and done < total:
            eta = f", about {max(1, round((total - done) * elapsed / worked))} s left"
        counted = f"{done:,} / {total:,}" + (f" {unit}" if unit else "")
        bar.progress(done / max(total, 1), text=f"{text}: {counted}{eta}")

    return update, bar.empty
