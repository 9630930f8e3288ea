"""Vocabulary trimming: the calibration texts tokenize the same (renumbered), the kept logits are the original's,
the folder is a stock checkpoint, and what cannot be trimmed is refused by name."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from hf_prune.vocabulary import choose_vocabulary, trim_model_vocabulary, trim_tokenizer, trim_vocabulary

#: the task's text (calibration) and text the task never saw
TASK = ["the cat sat on the mat", "a dog ran in the park", "where did the cat sit? on the mat"]
OTHER = ["quantum chromodynamics explains hadrons", "zebras gallop over the savanna quickly",
         "photosynthesis converts sunlight into sugar", "volcanic eruptions reshape islands"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator((TASK + OTHER) * 4, trainers.BpeTrainer(
        vocab_size=420, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|endoftext|>")


def _llama(tokenizer, tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                                               bos_token_id=tokenizer.bos_token_id)
    if not tied:
        model.lm_head.bias = torch.nn.Parameter(torch.randn(len(tokenizer)))
    return model


def test_the_task_text_tokenizes_to_the_same_tokens_renumbered_and_other_text_still_round_trips(tokenizer):
    kept = choose_vocabulary(tokenizer, TASK)
    trimmed = trim_tokenizer(tokenizer, kept)
    assert 256 < len(trimmed) == len(kept) < len(tokenizer)
    for text in TASK:
        new = trimmed(text, add_special_tokens=False)["input_ids"]
        assert [kept[i] for i in new] == tokenizer(text, add_special_tokens=False)["input_ids"]
    for text in OTHER:  # every byte is kept: the text still tokenizes and decodes back to itself, in more pieces
        new = trimmed(text, add_special_tokens=False)["input_ids"]
        assert trimmed.decode(new) == text
        assert len(new) >= len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(trimmed(OTHER[0])["input_ids"]) > len(tokenizer(OTHER[0])["input_ids"])
    for special in SPECIALS:  # renumbered, still special
        assert kept[trimmed.convert_tokens_to_ids(special)] == tokenizer.convert_tokens_to_ids(special)
    assert trimmed.eos_token == "<|im_end|>"


def test_the_first_merges_and_the_pieces_of_every_kept_token_are_kept(tokenizer):
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    vocab = tokenizer.get_vocab()
    kept = set(choose_vocabulary(tokenizer, [], first_merges=20))
    pairs = [merge.split(" ") if isinstance(merge, str) else merge for merge in merges]
    assert all(vocab[left + right] in kept for left, right in pairs[:20])
    assert not all(vocab[left + right] in kept for left, right in pairs[20:])
    for left, right in pairs:  # closed: a kept token's halves are kept
        if vocab[left + right] in kept:
            assert vocab[left] in kept and vocab[right] in kept


@pytest.mark.parametrize("tied", [True, False])
def test_the_trimmed_model_gives_the_original_logits_at_the_kept_tokens(tokenizer, tied):
    model, original = _llama(tokenizer, tied), _llama(tokenizer, tied)
    result = trim_vocabulary(model, tokenizer, TASK)
    kept = torch.tensor(result.kept_ids)
    assert model.config.vocab_size == len(kept) == model.get_input_embeddings().num_embeddings
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    for text in TASK:
        old = torch.tensor([tokenizer(text)["input_ids"]])
        new = torch.tensor([result.tokenizer(text)["input_ids"]])
        with torch.no_grad():  # same hidden states and lm_head rows: the kept logits, up to the product rounding
            assert torch.equal(model.model(new).last_hidden_state, original.model(old).last_hidden_state)
            torch.testing.assert_close(model(new).logits, original(old).logits[..., kept], atol=1e-6, rtol=1e-6)
    assert torch.equal(model.lm_head.weight, original.lm_head.weight[kept])
    if not tied:
        assert torch.equal(model.lm_head.bias, original.lm_head.bias[kept])
    new_id = {old: new for new, old in enumerate(result.kept_ids)}
    assert model.config.eos_token_id == new_id[tokenizer.eos_token_id] == result.tokenizer.eos_token_id
    assert model.config.pad_token_id == new_id[tokenizer.pad_token_id]
    assert model.generation_config.eos_token_id == [new_id[tokenizer.eos_token_id], new_id[tokenizer.pad_token_id]]
    assert result.vocab_size_before == len(tokenizer) and result.vocab_size == len(kept)


LOAD_WITHOUT_HF_PRUNE = r'''
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = tokenizer(sys.argv[2], return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
generated = model.generate(ids, max_new_tokens=4, do_sample=False)
assert "hf_prune" not in sys.modules
print(json.dumps({"ids": ids.tolist(), "logits": logits.tolist(), "generated": generated.tolist(),
                  "vocab": len(tokenizer)}))
'''


def test_the_trimmed_folder_is_a_stock_checkpoint_loaded_without_hf_prune(tmp_path, tokenizer):
    model = _llama(tokenizer)
    result = trim_vocabulary(model, tokenizer, TASK)
    model.save_pretrained(tmp_path)
    result.tokenizer.save_pretrained(tmp_path)
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HF_PRUNE, str(tmp_path), TASK[2]], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    ids = result.tokenizer(TASK[2], return_tensors="pt")["input_ids"]
    assert loaded["ids"] == ids.tolist() and loaded["vocab"] == result.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(loaded["logits"]), model(ids).logits, atol=1e-5, rtol=1e-5)
    assert loaded["generated"] == model.generate(ids, max_new_tokens=4, do_sample=False).tolist()


def test_a_teacher_trimmed_with_the_same_ids_matches_the_student(tokenizer):
    student, teacher = _llama(tokenizer, seed=0), _llama(tokenizer, seed=1)
    result = trim_vocabulary(student, tokenizer, TASK)
    trim_model_vocabulary(teacher, result.kept_ids)
    assert teacher.config.vocab_size == student.config.vocab_size == result.vocab_size


def test_what_cannot_be_trimmed_is_refused_by_name(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "cat": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match=r"byte-level BPE .* model 'WordLevel' with pre-tokenizer 'Whitespace'"):
        choose_vocabulary(PreTrainedTokenizerFast(tokenizer_object=word_level), TASK)
    with pytest.raises(ValueError, match=r"first_merges must be a non-negative integer, got -1"):
        choose_vocabulary(tokenizer, TASK, first_merges=-1)
    with pytest.raises(ValueError, match=r"keep_ids holds 100000"):
        choose_vocabulary(tokenizer, TASK, keep_ids=[100000])
    kept = choose_vocabulary(tokenizer, TASK)
    with pytest.raises(ValueError, match=r"sorted and without repeats"):
        trim_tokenizer(tokenizer, kept[::-1])
    with pytest.raises(ValueError, match=r"leaves out the added tokens \['<\|im_end\|>'\]"):
        trim_tokenizer(tokenizer, [i for i in kept if i != tokenizer.eos_token_id])
    model = _llama(tokenizer)
    with pytest.raises(ValueError, match=r"LlamaConfig.bos_token_id=1: token 1 is not among the kept ids"):
        trim_model_vocabulary(model, [i for i in kept if i != tokenizer.bos_token_id])
    assert model.config.vocab_size == model.get_input_embeddings().num_embeddings == len(tokenizer)  # untouched
    assert model.config.eos_token_id == tokenizer.eos_token_id
    with pytest.raises(ValueError, match=r"the tokenizer has \d+ tokens but the model's embedding only 300 rows"):
        trim_vocabulary(LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32,
                                                     num_hidden_layers=1, num_attention_heads=2)), tokenizer, TASK)


def test_the_trimmed_model_and_tokenizer_round_trip_through_gguf(tmp_path, tokenizer):
    pytest.importorskip("gguf", reason="gguf is an optional extra (pip install 'hf_prune[gguf]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_prune.gguf_export import save_gguf

    model = _llama(tokenizer)
    result = trim_vocabulary(model, tokenizer, TASK)
    save_gguf(model, result.tokenizer, str(tmp_path / "model.gguf"))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf", dtype=torch.float32).eval()
    back_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    assert back.config.vocab_size == result.vocab_size
    for text in TASK + OTHER:
        assert back_tokenizer(text, add_special_tokens=False)["input_ids"] == \
            result.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([result.tokenizer(TASK[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
