"""kdlab: knowledge distillation for PyTorch.

import kdlab
teacher = kdlab.train(teacher_model, data, epochs=40).model
result = kdlab.distill(teacher, student_model, data)
"""

from kdlab.api import RunResult, distill, evaluate, fit_model, train
from kdlab.errors import ConfigError, DataError, KdlabError, NonFiniteLossError, StoreError
from kdlab.models import select_output

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "KdlabError",
    "NonFiniteLossError",
    "RunResult",
    "StoreError",
    "__version__",
    "distill",
    "evaluate",
    "fit_model",
    "select_output",
    "train",
]
