"""Token-level knowledge distillation for causal and seq2seq language models, memory-bounded.

The KD term is KL(teacher || student) of temperature-softened next-token distributions, times T², averaged over
the positions that carry a label (``labels != -100``: the answer tokens of an SFT example, not its prompt or
padding), or over every real position (``DistillationConfig.kd_tokens="all"``, :func:`every_token_labels`: the
prompt's tokens too, so each example distils its whole text at no extra forward pass). With a 50k-token vocabulary
and long sequences a full ``[batch, seq, vocab]`` fp32 softmax per model would dwarf the model itself, so positions
are processed in chunks of ``chunk_size`` rows: each chunk gathers its rows from the logits the forward already
holds, and is recomputed in the backward pass (activation checkpointing) instead of keeping its fp32 softmax alive.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["token_kd_loss", "label_positions", "every_token_labels", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 1024
IGNORE_INDEX = -100


def label_positions(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Flat row indexes into ``logits.view(-1, vocab)`` of the positions that predict a label. ``shift`` (causal
    LMs): the logits at position t predict the label at t + 1; seq2seq decoders' logits align with their labels."""
    batch, length = labels.shape
    if shift:
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    else:
        predicts = labels != IGNORE_INDEX
    return predicts.flatten().nonzero().flatten()


def every_token_labels(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                       position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Labels that make every real next-token prediction of a causal LM count (the prompt's as well as the
    answer's): ``input_ids``, with -100 at padding, at any token whose predecessor is padding (left padding: a pad
    position's logits predict nothing real) and, in padding-free batches, at the first token of each packed
    sequence (``position_ids`` 0: the previous sequence's last logits do not predict it)."""
    labels = input_ids.clone()
    if attention_mask is not None:
        real = attention_mask.to(torch.bool)
        labels[~real] = IGNORE_INDEX
        labels[:, 1:][~real[:, :-1]] = IGNORE_INDEX
    if position_ids is not None:
        labels[position_ids.reshape(labels.shape) == 0] = IGNORE_INDEX
    return labels


def _chunk_kl(student_flat: torch.Tensor, teacher_flat: torch.Tensor, rows: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Summed KL of the ``rows`` of the flat logits; the gathered rows and their softmaxes live only in here."""
    student_rows, teacher_rows = student_flat.index_select(0, rows), teacher_flat.index_select(0, rows)
    log_p_student = F.log_softmax(student_rows.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_rows.float() / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float, shift: bool, chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Mean over labelled positions of KL(teacher || student) at ``temperature``, times ``temperature ** 2``.

    ``student_logits``/``teacher_logits``: ``[batch, seq, vocab]`` (the teacher's without gradient); ``labels``:
    ``[batch, seq]``. Peak extra memory: two fp32 ``[chunk_size, vocab]`` softmaxes, whatever the batch.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the two models must share the vocabulary")
    vocab = student_logits.shape[-1]
    rows = label_positions(labels, shift).to(student_logits.device)
    if rows.numel() == 0:
        return student_logits.sum() * 0.0   # no labelled token in this batch: nothing to distil, graph kept
    student_flat = student_logits.reshape(-1, vocab)
    teacher_flat = teacher_logits.detach().reshape(-1, vocab)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for chunk in rows.split(chunk_size):
        if torch.is_grad_enabled() and student_flat.requires_grad:   # backward recomputes the chunk
            total = total + checkpoint(_chunk_kl, student_flat, teacher_flat, chunk, temperature, use_reentrant=False)
        else:
            total = total + _chunk_kl(student_flat, teacher_flat, chunk, temperature)
    return total / rows.numel() * temperature ** 2
