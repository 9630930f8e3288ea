"""2:4 export: which layers qualify (checked on CPU), the CPU refusal, and the CUDA conversion where a GPU exists."""
import pytest
import torch
from torch import nn

from hf_prune import Pruner, PruningConfig, semi_structured_plan, to_semi_structured
from hf_prune.semi_structured import is_two_four


def test_is_two_four():
    assert is_two_four(torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]]))
    assert not is_two_four(torch.tensor([[1.0, 1.0, 2.0, 0.0]]))
    assert not is_two_four(torch.zeros(2, 6))  # 6 inputs do not split into groups of 4


def _model():
    torch.manual_seed(0)
    # fits the fp16 tile (out % 32, in % 64) / too few rows / not pruned
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 16), nn.Linear(16, 64))
    Pruner(model, PruningConfig(target_sparsity=0.5, pattern="2:4", criterion="magnitude", start_step=0,
                                end_step=0, exclude=[r"^2$"])).step(0)
    return model


def test_plan_names_each_dense_layer_with_its_reason():
    model = _model()
    plan = semi_structured_plan(model, dtype=torch.float16)
    assert plan.convertible == ["0"]
    assert "out_features must be a multiple of" in plan.dense["1"] and "(16, 64)" in plan.dense["1"]
    assert plan.dense["2"] == "weight is not 2:4 sparse"
    assert "float16 or bfloat16" in semi_structured_plan(model).dense["0"]  # float32 as it is


def test_cpu_model_is_refused():
    with pytest.raises(ValueError, match="needs the model on a CUDA GPU in float16 or bfloat16; it is on cpu"):
        to_semi_structured(_model())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured 2:4 kernels need a CUDA GPU; none here")
def test_cuda_conversion_keeps_outputs():
    model = _model().half().cuda()
    inputs = torch.randn(64, 64, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        expected = model(inputs)
    plan = to_semi_structured(model)
    assert plan.convertible == ["0"] and set(plan.dense) == {"1", "2"}
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), expected, atol=2e-2, rtol=2e-2)
