"""Which Linear modules form an attention head or an FFN channel, per model family.

Structured patterns (``"head"``, ``"channel"``) prune units that span several Linear modules: a head is a slice
of output rows of the query, key and value projections plus the matching input columns of the attention output
projection; an FFN channel is one output row (and bias) of the up projection plus the matching input column of
the down projection. That knowledge is one :class:`Architecture` per family, registered under the config's
``model_type``; any other architecture is refused by name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import nn

from .registry import Registry

__all__ = ["Architecture", "StructuredBlock", "ARCHITECTURES", "get_architecture", "find_blocks", "STRUCTURED_KINDS"]

STRUCTURED_KINDS = ("head", "channel")


@dataclass(frozen=True)
class Architecture:
    """Module paths inside one transformer layer (relative to the layer) of a model family."""

    layer: str              # regex matching the full name of a transformer layer module
    attention: str          # module holding the head count (``heads_attribute``) and the head size
    heads_attribute: Optional[str]   # None: the attention infers its head count from its projections' shapes
    query: str
    key: str
    value: str
    attention_output: str
    ffn_in: str
    ffn_out: str
    ffn_gate: Optional[str] = None   # a second up projection whose rows go with ``ffn_in``'s (gated FFNs)
    #: grouped-query attention (Llama family): a unit is one key/value head with the query heads that share it
    grouped_query: bool = False


@dataclass(frozen=True)
class StructuredBlock:
    """Linear modules whose units (heads or channels) are pruned together.

    Unit ``u`` is rows ``u*unit_size .. (u+1)*unit_size`` of every ``rows`` module (and of their biases) and the
    same range of input columns of every ``columns`` module.
    """

    name: str
    kind: str
    layer: str
    rows: Tuple[str, ...]
    columns: Tuple[str, ...]
    unit_size: int
    num_units: int
    #: members whose units are wider than ``unit_size`` (GQA: the query rows and output columns of a key/value group)
    unit_sizes: Tuple[Tuple[str, int], ...] = ()

    @property
    def members(self) -> Tuple[str, ...]:
        return self.rows + self.columns

    def size_of(self, member: str) -> int:
        """Rows (or columns) of ``member`` that one unit spans."""
        return dict(self.unit_sizes).get(member, self.unit_size)


ARCHITECTURES: Registry = Registry("architecture")

_BERT_LIKE = Architecture(
    layer=r"(^|\.)encoder\.layer\.\d+$", attention="attention.self", heads_attribute="num_attention_heads",
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    attention_output="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense",
)
for _model_type in ("bert", "roberta", "xlm_roberta", "camembert", "electra"):
    ARCHITECTURES.register(_model_type, _BERT_LIKE)
_LLAMA_LIKE = Architecture(
    layer=r"(^|\.)layers\.\d+$", attention="self_attn", heads_attribute=None, query="self_attn.q_proj",
    key="self_attn.k_proj", value="self_attn.v_proj", attention_output="self_attn.o_proj", ffn_in="mlp.up_proj",
    ffn_gate="mlp.gate_proj", ffn_out="mlp.down_proj", grouped_query=True,
)
for _model_type in ("llama", "mistral", "qwen2", "qwen3"):
    ARCHITECTURES.register(_model_type, _LLAMA_LIKE)
ARCHITECTURES.register("distilbert", Architecture(
    layer=r"(^|\.)transformer\.layer\.\d+$", attention="attention", heads_attribute="n_heads",
    query="attention.q_lin", key="attention.k_lin", value="attention.v_lin", attention_output="attention.out_lin",
    ffn_in="ffn.lin1", ffn_out="ffn.lin2",
))


#: Set on the config class of a slimmed model (see ``slimming``), whose ``model_type`` is not transformers' own.
BASE_MODEL_TYPE_ATTRIBUTE = "hf_prune_base_model_type"


def get_architecture(model: nn.Module) -> Architecture:
    """The table entry of ``model``'s family (from ``model.config.model_type``)."""
    config = getattr(model, "config", None)
    model_type = getattr(type(config), BASE_MODEL_TYPE_ATTRIBUTE, None) or getattr(config, "model_type", None)
    key = model_type.replace("-", "_") if isinstance(model_type, str) else None
    if key not in ARCHITECTURES:
        raise ValueError(
            f"structured pruning (heads, channels) does not know architecture {model_type!r} "
            f"({type(model).__name__}); known: {', '.join(ARCHITECTURES.names())}"
        )
    return ARCHITECTURES.get(key)


def find_blocks(model: nn.Module, kind: str) -> List[StructuredBlock]:
    """Every attention block (``kind="head"``) or FFN (``kind="channel"``) of ``model``, in layer order."""
    if kind not in STRUCTURED_KINDS:
        raise ValueError(f"unknown structured unit {kind!r}; allowed: {', '.join(STRUCTURED_KINDS)}")
    architecture = get_architecture(model)
    blocks = []
    for layer_name, _ in model.named_modules():
        if not re.search(architecture.layer, layer_name):
            continue
        sizes: Tuple[Tuple[str, int], ...] = ()
        if kind == "head":
            rows = tuple(f"{layer_name}.{p}" for p in (architecture.query, architecture.key, architecture.value))
            columns = (f"{layer_name}.{architecture.attention_output}",)
            attention = model.get_submodule(f"{layer_name}.{architecture.attention}")
            unit_size = int(getattr(attention, "attention_head_size", None) or attention.head_dim)
            name = f"{layer_name}.attention"
            if architecture.grouped_query:  # unit = a key/value head; its query heads and output columns come along
                group = int(attention.num_key_value_groups)
                sizes = ((rows[0], unit_size * group), (columns[0], unit_size * group))
            width = model.get_submodule(rows[1]).out_features  # key rows: one per unit
        else:
            ffn_rows = (architecture.ffn_gate, architecture.ffn_in) if architecture.ffn_gate else (architecture.ffn_in,)
            rows, columns = tuple(f"{layer_name}.{p}" for p in ffn_rows), (f"{layer_name}.{architecture.ffn_out}",)
            unit_size, name = 1, f"{layer_name}.ffn"
            width = model.get_submodule(rows[0]).out_features
        blocks.append(StructuredBlock(name, kind, layer_name, rows, columns, unit_size, width // unit_size, sizes))
    if not blocks:
        raise ValueError(f"found no transformer layer in {type(model).__name__} (looked for modules named like "
                         f"{architecture.layer!r})")
    return blocks
