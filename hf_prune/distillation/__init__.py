"""Knowledge distillation for pruned students: logit KD and SimKD (reused teacher classifier)."""
from .config import DistillationConfig
from .losses import feature_mse, kd_loss
from .simkd import SimKDHead, folded_head
from .trainer import DistillationTrainer

__all__ = ["DistillationConfig", "DistillationTrainer", "SimKDHead", "feature_mse", "folded_head", "kd_loss"]
