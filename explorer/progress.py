"""Long work on screen: progress bars fed by core's ``progress(done, total)``, and a Stop button.

The toolbar's own Stop is hidden (``toolbarMode = "minimal"``), so every long run shows its own.
"""

from __future__ import annotations

import time
from typing import Callable

import streamlit as st

from core.errors import SimaError

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


STOPPED = "stopped_runs"


class RunStopped(SimaError):
    """A long run that the user stopped; ``run`` identifies it for :func:`resume`."""

    def __init__(self, run: str, what: str):
        super().__init__(f"{what} was stopped. What finished before is kept, so running it again resumes.")
        self.run = run


def stop_button(run: str, what: str) -> Callable[[], None]:
    """A visible Stop button for a long run; returns the function that removes it.

    Pressing it reruns the page, which interrupts the running computation at its next progress
    update; :func:`raise_if_stopped` then keeps the page from starting the same run again.
    """
    slot = st.empty()
    slot.button(f"Stop: {what}", key=f"stop:{run}:{what}", on_click=_stop, args=(run,), icon=":material/stop_circle:",
                help="Stops this computation at the next batch; what finished is kept.")
    return slot.empty


def _stop(run: str) -> None:
    st.session_state[STOPPED] = st.session_state.get(STOPPED, frozenset()) | {run}


def stopped(run: str) -> bool:
    return run in st.session_state.get(STOPPED, frozenset())


def raise_if_stopped(run: str, what: str) -> None:
    """RunStopped when the user stopped this run and has not asked to run it again."""
    if stopped(run):
        raise RunStopped(run, what)


def resume(run: str) -> None:
    """Forget that ``run`` was stopped, so the page starts it again."""
    st.session_state[STOPPED] = st.session_state.get(STOPPED, frozenset()) - {run}
