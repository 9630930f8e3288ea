"""SimKD (Chen et al., CVPR 2022, arXiv 2203.14001): the student reuses the teacher's frozen task head.

A trainable linear projector maps the student's head input (width ``d_s``) to the teacher's width ``d_t``;
the teacher's final Linear scores it. Because both are linear, they fold into one ordinary head:
``W = W_head @ P`` and ``b = W_head @ b_P + b_head``, so the saved student is a plain transformers model.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ["find_task_head", "SimKDHead", "install_simkd_head", "folded_head"]

#: The final Linear of each task head, in lookup order (QA, RoBERTa-style classifier, plain classifier).
HEAD_NAMES = ("qa_outputs", "classifier.out_proj", "classifier", "score")


def find_task_head(model: nn.Module) -> Optional[str]:
    """Name of the model's final task Linear, or None for a model without a task head."""
    for name in HEAD_NAMES:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, (nn.Linear, SimKDHead)):
            return name
    return None


class SimKDHead(nn.Module):
    """Projector (trainable) followed by the teacher's head (frozen). Keeps the last projected features
    for the feature loss."""

    def __init__(self, student_width: int, teacher_head: nn.Linear) -> None:
        super().__init__()
        teacher_width = teacher_head.in_features
        self.projector = nn.Linear(student_width, teacher_width)
        with torch.no_grad():
            if student_width == teacher_width:
                self.projector.weight.copy_(torch.eye(teacher_width))
            self.projector.bias.zero_()
        self.head = nn.Linear(teacher_width, teacher_head.out_features)
        self.head.load_state_dict(teacher_head.state_dict())
        self.head.to(teacher_head.weight.device)
        self.head.requires_grad_(False)
        self.projected: Optional[torch.Tensor] = None

    @property
    def in_features(self) -> int:
        return self.projector.in_features

    @property
    def out_features(self) -> int:
        return self.head.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.projected = self.projector(features)
        return self.head(self.projected)

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """One Linear computing exactly ``head(projector(x))``."""
        weight = self.head.weight.double() @ self.projector.weight.double()
        bias = self.head.weight.double() @ self.projector.bias.double() + self.head.bias.double()
        folded = nn.Linear(self.in_features, self.out_features, device=weight.device, dtype=self.head.weight.dtype)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
        return folded


def install_simkd_head(student: nn.Module, teacher: nn.Module) -> SimKDHead:
    """Swap the student's final task Linear for a SimKD head built around the teacher's."""
    name = find_task_head(student)
    teacher_head = teacher.get_submodule(find_task_head(teacher))
    student_head = student.get_submodule(name)
    head = SimKDHead(student_head.in_features, teacher_head).to(student_head.weight.device)
    student.set_submodule(name, head)
    return head


@contextlib.contextmanager
def folded_head(model: nn.Module) -> Iterator[None]:
    """Within the block the model holds a plain folded Linear in place of its SimKD head."""
    name = find_task_head(model)
    head = model.get_submodule(name) if name else None
    if not isinstance(head, SimKDHead):
        yield
        return
    model.set_submodule(name, head.fold())
    try:
        yield
    finally:
        model.set_submodule(name, head)
