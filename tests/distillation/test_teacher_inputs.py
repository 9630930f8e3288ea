"""The teacher gets the inputs its own forward takes (a BERT teacher's token_type_ids survive the Trainer's
remove_unused_columns for a DistilBERT student), and a teacher with another tokenizer is refused by name."""
import datasets
import pytest
import torch
from transformers import DistilBertConfig, DistilBertForQuestionAnswering, PreTrainedTokenizerFast

from hf_prune.distillation import DistillationConfig, DistillationTrainer
from tests.conftest import QADataset, tiny_bert_qa
from tests.distillation.test_trainer import _args


def _dataset_with_token_types(size=32):
    rows = [QADataset(size)[i] for i in range(size)]
    token_types = [[0] * 8 + [1] * 16 for _ in rows]
    return datasets.Dataset.from_dict({
        "input_ids": [r["input_ids"].tolist() for r in rows], "attention_mask": [r["attention_mask"].tolist() for r in rows],
        "token_type_ids": token_types, "start_positions": [int(r["start_positions"]) for r in rows],
        "end_positions": [int(r["end_positions"]) for r in rows], "unused_column": ["x"] * size})


def test_bert_teacher_gets_token_type_ids_a_distilbert_student_does_not_take(tmp_path):
    torch.manual_seed(0)
    student = DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4,
                                                              hidden_dim=64, max_position_embeddings=64))
    teacher = tiny_bert_qa(seed=2)
    seen = {"teacher": [], "student": []}
    teacher.register_forward_pre_hook(lambda m, a, kw: seen["teacher"].append(set(kw)), with_kwargs=True)
    student.register_forward_pre_hook(lambda m, a, kw: seen["student"].append(set(kw)), with_kwargs=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, distillation_config=DistillationConfig(),
                                  args=_args(tmp_path, max_steps=2), train_dataset=_dataset_with_token_types())
    trainer.train()
    assert all("token_type_ids" in keys for keys in seen["teacher"]) and seen["teacher"]
    assert all("token_type_ids" not in keys and "unused_column" not in keys for keys in seen["student"])
    assert all("start_positions" not in keys for keys in seen["teacher"])


def _tokenizer(tmp_path, name, tokens, unk_token="[UNK]"):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens])}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")),
                                   unk_token=unk_token, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def test_teacher_with_another_tokenizer_is_refused_naming_the_difference(tmp_path):
    student_tok = _tokenizer(tmp_path, "s", ["apple", "pear"])
    def build(teacher_tok):
        return DistillationTrainer(model=tiny_bert_qa(seed=1), teacher_model=tiny_bert_qa(seed=2),
                                   args=_args(tmp_path), train_dataset=QADataset(8), processing_class=student_tok,
                                   teacher_processing_class=teacher_tok)

    build(_tokenizer(tmp_path, "same", ["apple", "pear"]))  # the same vocabulary and special tokens: accepted
    with pytest.raises(ValueError, match=r"vocabularies .* disagree on 2 entries \(e.g. '(pear|plum)'=6, '(pear|plum)'=6\)"):
        build(_tokenizer(tmp_path, "t", ["apple", "plum"]))
    with pytest.raises(ValueError, match=r"special tokens: unk_token: '\[MASK\]' \(teacher\) vs '\[UNK\]' \(student\)"):
        build(_tokenizer(tmp_path, "u", ["apple", "pear"], unk_token="[MASK]"))
