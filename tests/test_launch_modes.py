"""Sharded launch modes hf_prune cannot mask yet are refused before the first step, naming the mode: FSDP2's
DTensor parameters (a real DTensor on a 1-process gloo group), DeepSpeed ZeRO-3's empty partitions (a stand-in
with DeepSpeed's attributes: DeepSpeed is not installed here), FSDP1's flat parameters."""
import os
import socket

import pytest
import torch
from torch import nn

from hf_prune import Pruner, PruningConfig
from tests.conftest import tiny_bert_qa

CONFIG = PruningConfig(target_sparsity=0.5, start_step=1, end_step=4, frequency=1)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_dtensor_parameters_are_refused():
    from torch.distributed.tensor import Replicate, distribute_tensor, init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = tiny_bert_qa()
        query = model.bert.encoder.layer[0].attention.self.query
        query.weight = nn.Parameter(distribute_tensor(query.weight.detach(), mesh, [Replicate()]))
        with pytest.raises(ValueError, match=r"attention.self.query.weight is a DTensor \(FSDP2"):
            Pruner(model, CONFIG)
    finally:
        torch.distributed.destroy_process_group()


def test_zero3_partitions_are_refused():
    model = tiny_bert_qa()
    key = model.bert.encoder.layer[1].attention.self.key
    key.weight = nn.Parameter(torch.empty(0))
    key.weight.ds_id = 7                          # what DeepSpeed ZeRO-3 sets on a partitioned parameter
    with pytest.raises(ValueError, match=r"layer.1.attention.self.key.weight is partitioned by DeepSpeed ZeRO-3"):
        Pruner(model, CONFIG)


def test_fsdp1_is_refused_naming_it():
    class FlatParameter(nn.Parameter):           # the class name FSDP1 gives its flattened parameters
        pass

    model = tiny_bert_qa()
    model.register_parameter("flat", FlatParameter(torch.zeros(4)))
    with pytest.raises(ValueError, match="FSDP1"):
        Pruner(model, CONFIG)
