"""Unit importance from the loss: the Fisher information of each unit's mask (Kwon et al., 2022, "A Fast
Post-Training Pruning Framework for Transformers").

Every KV group, FFN channel and hidden channel gets a mask variable ``m`` (1 = kept), one per sequence, that
multiplies what the unit contributes: a KV group's query heads' attention outputs (the input of ``o_proj``), an FFN
channel's activation (the input of ``down_proj``), a hidden channel's value in the output of every RMSNorm (one
mask shared by all norms). ``dL_n/dm`` at ``m = 1`` is the first-order change of sequence ``n``'s loss when the
unit is removed (``sum over tokens of a * dL/da``); the score aggregates it over sequences: ``"l2"``, the root of
its mean square (the square root of the empirical Fisher of the mask), or ``"mean"``, its mean absolute value.

The loss is the summed next-token loss of each batch on its ``labels`` where it has them (e.g. completion-only SFT
batches: the answer tokens, so the units are ranked by what the *task* needs), else on every non-padding token.
Unlike the activation scores this needs one backward pass per batch; the weights' own gradients are not computed
(they are frozen for the passes and restored after), so frozen and LoRA bases work alike.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Dict, Iterator, List, Tuple

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .activation_importance import DecoderParts

__all__ = ["fisher_unit_scores", "batch_labels"]


def batch_labels(inputs: dict, batch: dict) -> torch.Tensor:
    """The batch's ``labels`` or, without them, its ``input_ids`` with padding (``attention_mask == 0``) left out."""
    labels = batch.get("labels")
    if labels is None:
        labels = inputs["input_ids"].clone()
        if "attention_mask" in inputs:
            labels[inputs["attention_mask"] == 0] = -100
    return labels.to(inputs["input_ids"].device)


class _Masks:
    """The current batch's mask variables, created on first use with the hooked tensor's batch size and dtype."""

    def __init__(self) -> None:
        self.variables: Dict[str, torch.Tensor] = {}

    def get(self, key: str, like: torch.Tensor, units: int) -> torch.Tensor:
        if key not in self.variables:
            self.variables[key] = torch.ones(like.shape[0], units, dtype=like.dtype, device=like.device,
                                             requires_grad=True)
        return self.variables[key]


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def fisher_unit_scores(model: nn.Module, parts: "DecoderParts", batches: List[dict], aggregation: str,
                       inputs_of) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(kv_groups [layers, kv_heads], ffn_channels [layers, intermediate], hidden [hidden], labelled tokens)``
    from ``batches`` (module docstring); ``inputs_of(model, batch)`` gives a batch's model inputs on the model's
    device. The model runs in its current mode: the caller puts it in eval mode."""
    masks = _Masks()
    group_width = (parts.heads // parts.kv_heads) * parts.head_dim
    handles = []

    def heads_hook(index: int):
        def hook(module, args):
            hidden = args[0]
            mask = masks.get(f"kv.{index}", hidden, parts.kv_heads)
            grouped = hidden.reshape(*hidden.shape[:-1], parts.kv_heads, group_width)
            return (grouped * mask[:, None, :, None]).reshape(hidden.shape),
        return hook

    def ffn_hook(index: int):
        def hook(module, args):
            mask = masks.get(f"ffn.{index}", args[0], args[0].shape[-1])
            return (args[0] * mask[:, None, :]),
        return hook

    def norm_hook(module, args, output):
        return output * masks.get("hidden", output, output.shape[-1])[:, None, :]

    for index, layer in enumerate(parts.layers):
        handles += [layer.self_attn.o_proj.register_forward_pre_hook(heads_hook(index)),
                    layer.mlp.down_proj.register_forward_pre_hook(ffn_hook(index)),
                    layer.input_layernorm.register_forward_hook(norm_hook),
                    layer.post_attention_layernorm.register_forward_hook(norm_hook)]
    handles.append(parts.norm.register_forward_hook(norm_hook))
    sums: Dict[str, torch.Tensor] = {}
    sequences = tokens = 0
    try:
        with _frozen(model), torch.enable_grad():
            for batch in batches:
                inputs = inputs_of(model, batch)
                labels = batch_labels(inputs, batch)[:, 1:]
                masks.variables.clear()
                logits = model(**inputs).logits[:, :-1].float()
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   ignore_index=-100, reduction="sum")
                keys = list(masks.variables)
                derivatives = torch.autograd.grad(loss, [masks.variables[key] for key in keys], allow_unused=True)
                labelled = (labels != -100).any(dim=1)   # a sequence without labels has no loss to rank by
                for key, derivative in zip(keys, derivatives):
                    if derivative is None:
                        continue
                    values = derivative.detach().float()[labelled]
                    term = values.pow(2) if aggregation == "l2" else values.abs()
                    sums[key] = sums[key] + term.sum(dim=0) if key in sums else term.sum(dim=0)
                sequences += int(labelled.sum())
                tokens += int((labels != -100).sum())
    finally:
        masks.variables.clear()
        for handle in handles:
            handle.remove()
    if not sequences:
        raise ValueError("the Fisher unit score needs labelled tokens; every calibration sequence's labels are -100")

    def result(key: str) -> torch.Tensor:
        mean = sums[key] / sequences
        return mean.sqrt() if aggregation == "l2" else mean

    layers = len(parts.layers)
    kv_groups = torch.stack([result(f"kv.{index}") for index in range(layers)])
    ffn = torch.stack([result(f"ffn.{index}") for index in range(layers)])
    return kv_groups.cpu(), ffn.cpu(), result("hidden").cpu(), tokens
