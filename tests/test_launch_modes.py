"""Sharded launch modes hf_prune cannot mask are refused before the first step, naming the mode: a DTensor placed
otherwise than FSDP2's row shards (a real replicated DTensor on a 1-process gloo group: tensor parallelism's
placements), DeepSpeed ZeRO-3's empty partitions (a stand-in with DeepSpeed's attributes), FSDP1's flat
parameters. FSDP2 itself is supported: tests/test_fsdp.py."""
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


@pytest.fixture
def one_rank_mesh():
    from torch.distributed.tensor import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        torch.distributed.destroy_process_group()


def _distribute(module: nn.Module, mesh, placement) -> None:
    from torch.distributed.tensor import distribute_tensor

    module.weight = nn.Parameter(distribute_tensor(module.weight.detach(), mesh, [placement]))


def test_dtensors_not_sharded_by_rows_are_refused(one_rank_mesh):
    from torch.distributed.tensor import Replicate

    model = tiny_bert_qa()
    _distribute(model.bert.encoder.layer[0].attention.self.query, one_rank_mesh, Replicate())
    with pytest.raises(ValueError, match=r"attention.self.query.weight is a DTensor placed \(Replicate\(\),\) on a "
                                         r"1-D mesh: hf_prune prunes FSDP2's row sharding only"):
        Pruner(model, CONFIG)


@pytest.mark.parametrize("method", ["reused_classifier", "narrower"])
def test_distillation_modules_outside_a_sharded_students_forward_are_refused(one_rank_mesh, tmp_path, method):
    from torch.distributed.tensor import Shard
    from transformers import TrainingArguments

    from hf_prune import DistillationConfig, DistillationTrainer

    student = tiny_bert_qa(seed=1, hidden_size=16 if method == "narrower" else 32)
    config = (DistillationConfig(method="reused_classifier") if method == "reused_classifier"
              else DistillationConfig(hidden_state_weight=1.0))
    trainer = DistillationTrainer(model=student, teacher_model=tiny_bert_qa(seed=2), distillation_config=config,
                                  args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    trainer._check_sharded_student(student)  # unsharded: accepted
    _distribute(student.bert.encoder.layer[0].intermediate.dense, one_rank_mesh, Shard(0))
    trainer._sharding_checked = False
    with pytest.raises(ValueError, match=r"on a sharded \(FSDP2 / ZeRO-3\) student is not supported; use method 'logits'"):
        trainer.compute_loss(student.train(), {})


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
