"""hf_prune: sparsify transformer models while they fine-tune inside the stock ``transformers.Trainer``."""
from .callback import PruningTrainerCallback, add_pruning_callback
from .config import PruningConfig
from .criteria import CRITERIA
from .distillation import DistillationConfig, DistillationTrainer
from .llm_compression import CompressionResult, compress
from .model_shape import ModelShape
from .patterns import PATTERN_FAMILIES, get_pattern
from .pruner import Pruner
from .report import SparsityReport, sparsity_report
from .schedules import SCHEDULES, PruningSchedule
from .semi_structured import semi_structured_plan, to_semi_structured
from .slimming import SlimSummary, from_pretrained, slim

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "CompressionResult",
    "DistillationConfig",
    "DistillationTrainer",
    "ModelShape",
    "PATTERN_FAMILIES",
    "SCHEDULES",
    "SlimSummary",
    "Pruner",
    "PruningConfig",
    "PruningSchedule",
    "PruningTrainerCallback",
    "SparsityReport",
    "add_pruning_callback",
    "compress",
    "from_pretrained",
    "get_pattern",
    "semi_structured_plan",
    "slim",
    "sparsity_report",
    "to_semi_structured",
]
