"""Errors a user can cause, each with a sentence that says what to do.

The CLI prints these as one line and exits 2; the app shows them with ``st.error``.
Anything else that escapes is a bug in this project.
"""


class SimaError(Exception):
    """A problem with the user's input, model or data, with an actionable message."""


class ImageError(SimaError):
    """An image file that cannot be used; the message names the file."""


class ModelError(SimaError):
    """A model folder, checkpoint or hub id that cannot be loaded, or a model that misbehaves."""


class DataError(SimaError):
    """A set of samples or scores that cannot give a defined answer (empty, one class, ...)."""
