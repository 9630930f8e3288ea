"""Gradual depth pruning: chosen decoder layers fade out of the residual stream while the model trains, then go.

Removing a third of a small LLM's layers at once moves its perplexity by an order of magnitude (SmolLM2-135M: 22
-> 349 for 13 of 30 layers), and a short recovery rebuilds little of it. Fading lets the rest of the model adapt
while the leaving layers' share shrinks: a fading layer returns ``input + s * (layer(input) - input)``, the scale
``s`` falling linearly from 1 before ``start_step`` to 0 at ``end_step`` (a pure function of the step, so a resumed
run fades the same). From ``end_step`` on, a faded layer adds exactly nothing to the residual stream: training
skips its computation (in evaluation it still runs, so a generation cache keeps every layer's entry), and
:meth:`LayerFadeCallback.remove_faded_layers` deletes it without changing the logits and returns a stock model
(:func:`hf_prune.llm_compression.remove_layers`).
"""
from __future__ import annotations

import logging
import types
from typing import Callable, List, Optional, Sequence

from torch import nn
from transformers import TrainerCallback

from .activation_importance import decoder_parts
from .llm_compression import remove_layers
from .value_checks import short

logger = logging.getLogger(__name__)

__all__ = ["LayerFadeCallback", "fade_scale"]


def fade_scale(step: int, start_step: int, end_step: int) -> float:
    """The share of a fading layer's update kept at optimizer step ``step`` (0-based, the step being taken):
    1 before ``start_step``, then ``1 - (step - start_step) / (end_step - start_step)``, 0 from ``end_step``."""
    if step >= end_step:
        return 0.0
    if step < start_step:
        return 1.0
    return 1.0 - (step - start_step) / (end_step - start_step)


class LayerFadeCallback(TrainerCallback):
    """Fades ``layers`` (decoder layer indices) out of ``model`` between ``start_step`` and ``end_step`` of
    training; after training, :meth:`remove_faded_layers` returns the model without them (module docstring)."""

    def __init__(self, model: nn.Module, layers: Sequence[int], *, end_step: int, start_step: int = 0) -> None:
        decoder = decoder_parts(model).layers
        count = len(decoder)
        chosen = list(layers)
        if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count for i in chosen) \
                or len(set(chosen)) != len(chosen) or len(chosen) >= count:
            raise ValueError(f"layers={short(chosen)}: give distinct decoder layer indices in [0, {count}), fewer "
                             f"than all {count}")
        for name, value in (("start_step", start_step), ("end_step", end_step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {short(value)}")
        if end_step <= start_step:
            raise ValueError(f"end_step={end_step} must come after start_step={start_step}")
        self.model, self.layers = model, sorted(chosen)
        self.start_step, self.end_step = start_step, end_step
        self.scale = 1.0
        self._returns_tuple = False
        self._own_forwards: List[Optional[Callable]] = []
        self._handles = [decoder[index].register_forward_hook(self._fade, with_kwargs=True) for index in self.layers]
        for index in self.layers:
            self._skip_in_training_once_faded(decoder[index])

    def _skip_in_training_once_faded(self, layer: nn.Module) -> None:
        """Give ``layer`` an instance ``forward`` that returns its input while training at scale 0 (what the fade
        hook would return anyway) instead of computing an update that is multiplied by nothing. It is bound to the
        layer (a deep copy, e.g. a teacher made from the model, computes with its own weights), and an instance
        ``forward`` already there (accelerate's hooks) is still the one called."""
        own = vars(layer).get("forward")
        self._own_forwards.append(own)

        def forward(module: nn.Module, hidden_states, *args, **kwargs):
            if self.scale == 0.0 and module.training:
                return (hidden_states,) if self._returns_tuple else hidden_states
            compute = own if own is not None else type(module).forward.__get__(module)
            return compute(hidden_states, *args, **kwargs)

        layer.forward = types.MethodType(forward, layer)

    def _fade(self, module, args, kwargs, output):
        self._returns_tuple = isinstance(output, tuple)
        if self.scale == 1.0:
            return None
        before = kwargs.get("hidden_states", args[0] if args else None)
        after = output[0] if isinstance(output, tuple) else output
        faded = before if self.scale == 0.0 else before + self.scale * (after - before)
        return (faded,) + tuple(output[1:]) if isinstance(output, tuple) else faded

    def _set_step(self, step: int) -> None:
        self.scale = fade_scale(step, self.start_step, self.end_step)

    def on_train_begin(self, args, state, control, **kwargs):
        if getattr(args, "load_best_model_at_end", False):
            raise ValueError("load_best_model_at_end=True with layer fading: the best checkpoint can come from a step "
                             f"before end_step={self.end_step}, when layers {self.layers} still contributed, so the "
                             "model removed from it would not be the one its metrics describe; set it to False")
        if state.max_steps and self.end_step > state.max_steps:
            raise ValueError(f"end_step={self.end_step} is after the last step ({state.max_steps}): the layers "
                             f"{self.layers} would still contribute when training ends")
        self._set_step(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._set_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._set_step(state.global_step)  # what the model computes from now on (evaluation, the saved model)

    def on_train_end(self, args, state, control, **kwargs):
        logger.info("layer fading: layers %s at scale %.3f after step %d", self.layers, self.scale, state.global_step)

    @property
    def faded(self) -> bool:
        return self.scale == 0.0

    def remove_faded_layers(self) -> nn.Module:
        """A new model of the model's class without the faded layers (the logits unchanged); refused while they
        still contribute."""
        if not self.faded:
            raise ValueError(f"layers {self.layers} still contribute (scale {self.scale:.3f}); they are removed "
                             f"only once faded, at end_step={self.end_step}")
        for handle in self._handles:
            handle.remove()
        self._handles = []
        decoder = decoder_parts(self.model).layers
        for index, own in zip(self.layers, self._own_forwards):   # the forward each layer had before
            if own is None:
                vars(decoder[index]).pop("forward", None)
            else:
                decoder[index].forward = own
        return remove_layers(self.model, self.layers)
