"""Knowledge distillation for pruned students: logit KD and SimKD (reused teacher classifier)."""
from .config import DistillationConfig
from .layerwise import uniform_layer_map
from .losses import attention_kl, channel_mse, cosine_distance, feature_mse, kd_loss
from .saved_form import saved_form
from .simkd import SimKDHead, folded_head
from .trainer import DistillationTrainer, distillation_trainer_class

__all__ = ["DistillationConfig", "DistillationTrainer", "SimKDHead", "attention_kl", "channel_mse", "cosine_distance",
           "feature_mse", "distillation_trainer_class", "folded_head", "kd_loss", "saved_form", "uniform_layer_map"]
