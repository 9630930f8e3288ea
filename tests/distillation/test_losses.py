import math

import pytest
import torch

from hf_prune.distillation import DistillationConfig, feature_mse, kd_loss


def test_kd_loss_by_hand():
    student = torch.tensor([[0.0, math.log(3.0)]])  # T = 1: p_s = [1/4, 3/4]
    teacher = torch.tensor([[0.0, 0.0]])            # p_t = [1/2, 1/2]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 softens both and multiplies by T^2: student logits / 2 -> [0, log(3)/2] -> p_s = [1/(1+sqrt3), sqrt3/(1+sqrt3)]
    s3 = math.sqrt(3.0)
    p_s = [1 / (1 + s3), s3 / (1 + s3)]
    expected_t2 = 4.0 * (0.5 * math.log(0.5 / p_s[0]) + 0.5 * math.log(0.5 / p_s[1]))
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-6)


def test_kd_loss_is_zero_for_equal_logits_and_ignores_masked_positions():
    logits = torch.randn(3, 5)
    assert kd_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student, teacher = logits.clone(), logits.clone()
    student[:, -1] += 100.0  # differ only where the mask says padding
    mask = torch.tensor([[1, 1, 1, 1, 0]] * 3)
    assert kd_loss(student, teacher, 2.0, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(student, teacher, 2.0).item() > 1.0


def test_feature_mse_by_hand_with_mask():
    student = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 3.0], [0.0, 0.0]]])
    assert feature_mse(student, teacher).item() == pytest.approx((1 + 4 + 25 + 25) / 4)
    assert feature_mse(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx((1 + 4) / 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="hidden"), "unknown distillation method 'hidden'"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(hard_label_weight=-1), "hard_label_weight must be >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number, got nan"),
    (dict(temperature=float("inf")), "temperature must be a finite number, got inf"),
    (dict(distill_loss_weight=float("nan")), "distill_loss_weight must be a finite number"),
    (dict(hard_label_weight=float("inf")), "hard_label_weight must be a finite number"),
    (dict(distill_loss_weight=0, hard_label_weight=0), "nothing would be learned"),
])
def test_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = DistillationConfig(method="reused_classifier", temperature=3.0, hard_label_weight=0.5)
    config.save_pretrained(str(tmp_path))
    assert DistillationConfig.from_pretrained(str(tmp_path)) == config
    with pytest.raises(ValueError, match=r"unknown distillation config key\(s\) \['temp'\]"):
        DistillationConfig.from_dict({"temp": 1.0})
