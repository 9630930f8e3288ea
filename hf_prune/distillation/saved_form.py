"""The student as it is saved: training-only modules out of the way, so every saved model is a plain one."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from .layerwise import detached_projections
from .simkd import folded_head

__all__ = ["saved_form"]


@contextlib.contextmanager
def saved_form(model: nn.Module) -> Iterator[None]:
    """Within the block ``model`` is what gets saved and reported: a SimKD head folded into one Linear, the
    layer-wise distillation projections detached. Both come back afterwards."""
    with folded_head(model), detached_projections(model):
        yield
