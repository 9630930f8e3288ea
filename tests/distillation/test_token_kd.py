"""Token-level KD for causal and seq2seq LMs: the loss against a hand computation on labelled positions only,
chunking that never softmaxes more than chunk_size rows at once (with equal loss and gradients), and
DistillationTrainer with Llama/Qwen2 (GQA) and T5 students for a few steps."""
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, T5Config, \
    T5ForConditionalGeneration

from hf_prune import PruningConfig, PruningTrainerCallback
from hf_prune.distillation import DistillationConfig, DistillationTrainer
from hf_prune.distillation import token_kd
from hf_prune.distillation.token_kd import token_kd_loss
from tests.distillation.test_trainer import _args


def _reference(student, teacher, labels, temperature, shift):
    if shift:
        student, teacher, labels = student[:, :-1], teacher[:, :-1], labels[:, 1:]
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == -100:
                continue
            p = F.softmax(teacher[b, t] / temperature, -1)
            q = F.log_softmax(student[b, t] / temperature, -1)
            terms.append((p * (p.log() - q)).sum())
    return torch.stack(terms).mean() * temperature ** 2


@pytest.mark.parametrize("shift", [True, False])
def test_loss_against_hand_computation_on_labelled_positions(shift):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 11, generator=generator)
    teacher = torch.randn(2, 5, 11, generator=generator)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]])
    expected = _reference(student, teacher, labels, 2.0, shift)
    assert token_kd_loss(student, teacher, labels, 2.0, shift).item() == pytest.approx(expected.item(), rel=1e-5)


def test_chunks_bound_the_softmax_rows_and_change_nothing(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(3, 40, 50, generator=generator, requires_grad=True)
    teacher = torch.randn(3, 40, 50, generator=generator)
    labels = torch.randint(0, 50, (3, 40), generator=generator)
    full = token_kd_loss(student, teacher, labels, 2.0, True, chunk_size=10 ** 6)
    (grad_full,) = torch.autograd.grad(full, student)
    rows_seen = []
    original = F.log_softmax

    def spy(tensor, *args, **kwargs):
        rows_seen.append(tensor.shape[0])
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(token_kd.F, "log_softmax", spy)
    chunked = token_kd_loss(student, teacher, labels, 2.0, True, chunk_size=16)
    (grad_chunked,) = torch.autograd.grad(chunked, student)
    assert max(rows_seen) <= 16 and sum(rows_seen) >= 2 * 3 * 39    # forward and recomputation, 16 rows at most
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_chunked, grad_full)


class _LMData(torch.utils.data.Dataset):
    """Prompts whose first half is masked out of the labels, as an SFT collator would."""

    def __init__(self, size=24, length=12, vocab=64):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (size, length), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[: len(labels) // 2] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": labels}


def _llama(seed, cls=LlamaForCausalLM, config_cls=LlamaConfig):
    torch.manual_seed(seed)
    return cls(config_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_causal_lm_student_learns_from_teacher_with_pruning(tmp_path, family):
    classes = (LlamaForCausalLM, LlamaConfig) if family == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    student, teacher = _llama(1, *classes), _llama(2, *classes)
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=1, end_step=4,
                                                    frequency=1))
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  distillation_config=DistillationConfig(hard_label_weight=1.0, hidden_state_weight=1.0),
                                  args=_args(tmp_path, max_steps=6), train_dataset=_LMData(), callbacks=[callback])
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss_kd" in e]
    assert logged and all(e["loss_kd"] > 0 and e["loss_hard"] > 0 and e["loss_hidden"] > 0 for e in logged)
    assert callback.pruner.sparsity() == pytest.approx(0.5, abs=0.01) and "lm_head" not in callback.pruner.masks


def test_seq2seq_student(tmp_path):
    def t5(seed):
        torch.manual_seed(seed)
        return T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0))
    trainer = DistillationTrainer(model=t5(1), teacher_model=t5(2), distillation_config=DistillationConfig(),
                                  args=_args(tmp_path, max_steps=2, logging_steps=1), train_dataset=_LMData())
    trainer.train()
    assert all(e["loss_kd"] > 0 for e in trainer.state.log_history if "loss_kd" in e)


def test_language_model_refusals():
    with pytest.raises(ValueError, match="'reused_classifier' .* use method 'logits'"):
        DistillationTrainer(model=_llama(1), teacher_model=_llama(2),
                            distillation_config=DistillationConfig(method="reused_classifier"), args=_args("/tmp/x"))


def _word_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(64)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t1")), pad_token="t0",
                                   unk_token="t1", eos_token="t2")


def test_the_same_losses_inside_trl_sft_trainer(tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is an optional extra (pip install trl)")
    import datasets

    from hf_prune.distillation import distillation_trainer_class

    rows = [_LMData()[i] for i in range(16)]
    dataset = datasets.Dataset.from_dict({"input_ids": [r["input_ids"].tolist() for r in rows]})
    student, teacher = _llama(1), _llama(2)
    callback = PruningTrainerCallback(PruningConfig(target_sparsity=0.5, pattern="2:4", start_step=1, end_step=3,
                                                    frequency=1))
    trainer_class = distillation_trainer_class(trl.SFTTrainer)
    trainer = trainer_class(model=student, teacher_model=teacher,
                            distillation_config=DistillationConfig(hard_label_weight=1.0),
                            args=trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                                               logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
                                               disable_tqdm=True, learning_rate=5e-3),
                            train_dataset=dataset, processing_class=_word_tokenizer(), callbacks=[callback])
    assert isinstance(trainer, trl.SFTTrainer) and isinstance(trainer, DistillationTrainer)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss_kd" in e]
    assert logged and all(e["loss_kd"] > 0 and e["loss_hard"] > 0 for e in logged)
    assert callback.pruner.sparsity() == pytest.approx(0.5, abs=0.01)


def test_every_token_labels_leave_out_padding_and_packed_sequence_starts():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [0, 0, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]])
    expected = torch.tensor([[5, 6, 7, 8], [9, 10, -100, -100], [-100, -100, -100, 12]])   # 11 follows padding
    assert torch.equal(token_kd.every_token_labels(ids, mask), expected)
    packed = torch.tensor([[5, 6, 7, 8, 9]])
    positions = torch.tensor([[0, 1, 2, 0, 1]])   # two sequences: 8 is not predicted from 7
    assert torch.equal(token_kd.every_token_labels(packed, None, positions), torch.tensor([[-100, 6, 7, -100, 9]]))


@pytest.mark.parametrize("kd_tokens", ["labels", "all"])
def test_kd_tokens_all_distils_the_prompt_positions_too(tmp_path, kd_tokens):
    student, teacher = _llama(1), _llama(2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                  distillation_config=DistillationConfig(kd_tokens=kd_tokens),
                                  args=_args(tmp_path, max_steps=1), train_dataset=_LMData())
    rows = [_LMData()[i] for i in range(2)]
    batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    batch["attention_mask"][1, 9:] = 0                       # the second example is padded after 9 tokens
    batch["labels"][1, 9:] = -100
    student.train()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    positions = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100) if kd_tokens == "all" \
        else batch["labels"]
    expected = _reference(student_logits, teacher_logits, positions, 2.0, True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    other = _reference(student_logits, teacher_logits, batch["labels"] if kd_tokens == "all" else
                       batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100), 2.0, True)
    assert other.item() != pytest.approx(expected.item(), rel=1e-2)   # the two settings average different positions


def test_kd_tokens_refusals(tmp_path):
    with pytest.raises(ValueError, match="unknown kd_tokens 'prompt'; allowed: labels, all"):
        DistillationConfig(kd_tokens="prompt")

    def t5(seed):
        torch.manual_seed(seed)
        return T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0))
    with pytest.raises(ValueError, match="kd_tokens='all' distils every token of a causal language model's input; "
                                         "T5ForConditionalGeneration is not one"):
        DistillationTrainer(model=t5(1), teacher_model=t5(2), distillation_config=DistillationConfig(kd_tokens="all"),
                            args=_args(tmp_path))
