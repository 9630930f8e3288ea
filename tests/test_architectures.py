"""Which modules form a head or an FFN channel, for each supported family."""
import pytest
import torch

from hf_prune.architectures import find_blocks
from tests.test_slimming import MODELS


@pytest.mark.parametrize("family,query,ffn_out", [
    ("bert", "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.output.dense"),
    ("roberta", "roberta.encoder.layer.1.attention.self.query", "roberta.encoder.layer.1.output.dense"),
    ("distilbert", "distilbert.transformer.layer.1.attention.q_lin", "distilbert.transformer.layer.1.ffn.lin2"),
])
def test_blocks_of_each_family(family, query, ffn_out):
    model = MODELS[family]()
    heads, channels = find_blocks(model, "head"), find_blocks(model, "channel")
    assert [(b.num_units, b.unit_size, len(b.rows), len(b.columns)) for b in heads] == [(4, 8, 3, 1)] * 2
    assert [(b.num_units, b.unit_size) for b in channels] == [(64, 1)] * 2
    assert heads[1].rows[0] == query and channels[1].columns == (ffn_out,)
    for block in heads + channels:  # every member is a real Linear of the model
        assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in block.members)


def test_unknown_unit_kind_is_refused():
    with pytest.raises(ValueError, match="unknown structured unit 'neuron'"):
        find_blocks(MODELS["bert"](), "neuron")
