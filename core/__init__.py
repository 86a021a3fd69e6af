"""SimA explorer core: score-based membership inference on diffusion models.

Public entry points: :func:`load_model`, :mod:`core.attacks`, :mod:`core.metrics`,
:func:`core.audit.run_audit`.
"""

from core.errors import DataError, ImageError, ModelError, SimaError
from core.models.registry import demo_names, load_model

__all__ = ["DataError", "ImageError", "ModelError", "SimaError", "demo_names", "load_model"]
