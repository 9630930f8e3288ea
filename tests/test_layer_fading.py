"""Gradual depth pruning: the fade follows its schedule inside the Trainer, a faded layer is removed without
changing the logits, and what would leave a layer contributing is refused."""
import copy

import pytest
import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_prune.layer_fading import LayerFadeCallback, fade_scale
from hf_prune.llm_compression import remove_layers

IDS = torch.arange(24).view(2, 12) % 64


def _llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=32))


class _Tokens(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        ids = (torch.arange(12) * (index + 1)) % 64
        return {"input_ids": ids, "labels": ids}


def test_the_scale_falls_linearly_from_start_to_end_step():
    assert [fade_scale(step, 2, 6) for step in range(8)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_layers_fade_inside_the_trainer_and_are_removed_without_changing_the_logits(tmp_path, checkpointing):
    model = _llama()
    fade = LayerFadeCallback(model, [1, 2], end_step=4)
    seen, computed = [], []
    # (step, scale) at each call: how often a checkpointed layer is called again in backward varies by version
    model.model.layers[1].register_forward_pre_hook(
        lambda module, args: seen.append((trainer.state.global_step, fade.scale)))
    model.model.layers[1].mlp.register_forward_pre_hook(lambda module, args: computed.append(fade.scale))
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                                                          learning_rate=1e-3, report_to=[], use_cpu=True,
                                                          save_strategy="no", gradient_checkpointing=checkpointing),
                      train_dataset=_Tokens(), callbacks=[fade])
    trainer.train()
    assert sorted(set(seen)) == [(0, 1.0), (1, 0.75), (2, 0.5), (3, 0.25), (4, 0.0), (5, 0.0)] and fade.faded
    assert checkpointing or len(seen) == 6
    # once faded, training no longer computes the layer (a checkpointed layer recomputes in backward)
    assert [scale for scale in computed if scale != 0.0] == computed and len(computed) == (8 if checkpointing else 4)
    model.eval()
    with torch.no_grad():
        faded_logits = model(IDS).logits
        assert computed[-1] == 0.0             # evaluation computes it (a generation cache needs every layer)
        assert model.generate(IDS[:1], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 15)
    small = fade.remove_faded_layers().eval()  # as a script calls it after training: gradients enabled
    with torch.no_grad():
        assert small.config.num_hidden_layers == 2 and len(small.model.layers) == 2
        assert type(small) is LlamaForCausalLM
        torch.testing.assert_close(small(IDS).logits, faded_logits, atol=1e-6, rtol=1e-6)
        assert torch.equal(small.model.layers[1].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight)
        generated = small.generate(IDS[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)  # KV cache indices
        assert generated.shape == (1, 16)


def test_a_copy_of_a_fading_model_computes_with_its_own_weights():
    model = _llama().eval()
    LayerFadeCallback(model, [1], end_step=4)
    twin = copy.deepcopy(model)                 # e.g. a teacher made from the student after the callback
    with torch.no_grad():
        twin.model.layers[1].mlp.down_proj.weight.zero_()
        twin.model.layers[1].self_attn.o_proj.weight.zero_()
        assert not torch.allclose(twin(IDS).logits, model(IDS).logits)
        torch.testing.assert_close(twin(IDS).logits, remove_layers(twin, [1])(IDS).logits, atol=1e-6, rtol=1e-6)


def test_a_layer_with_zero_outputs_is_removed_exactly():
    model = _llama().eval()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    small = remove_layers(model, [2])           # gradients enabled, as a training script calls it
    with torch.no_grad():
        torch.testing.assert_close(small(IDS).logits, model(IDS).logits, atol=1e-6, rtol=1e-6)


def test_what_would_leave_a_layer_contributing_is_refused(tmp_path):
    model = _llama()
    with pytest.raises(ValueError, match=r"layers=\[0, 1, 2, 3\]: give distinct decoder layer indices in \[0, 4\)"):
        LayerFadeCallback(model, [0, 1, 2, 3], end_step=4)
    with pytest.raises(ValueError, match=r"layers=\[7\]"):
        LayerFadeCallback(model, [7], end_step=4)
    with pytest.raises(ValueError, match=r"end_step=2 must come after start_step=3"):
        LayerFadeCallback(model, [1], start_step=3, end_step=2)
    fade = LayerFadeCallback(model, [1], end_step=4)
    with pytest.raises(ValueError, match=r"layers \[1\] still contribute \(scale 1.000\)"):
        fade.remove_faded_layers()
    late = LayerFadeCallback(_llama(), [1], end_step=9)
    trainer = Trainer(model=late.model, args=TrainingArguments(str(tmp_path), max_steps=6, report_to=[],
                                                               use_cpu=True, save_strategy="no"),
                      train_dataset=_Tokens(), callbacks=[late])
    with pytest.raises(ValueError, match=r"end_step=9 is after the last step \(6\)"):
        trainer.train()
    best = LayerFadeCallback(_llama(), [1], end_step=4)
    trainer = Trainer(model=best.model, args=TrainingArguments(str(tmp_path), max_steps=6, report_to=[],
                                                               use_cpu=True, eval_strategy="steps", eval_steps=2,
                                                               save_strategy="steps", save_steps=2,
                                                               load_best_model_at_end=True),
                      train_dataset=_Tokens(), eval_dataset=_Tokens(), callbacks=[best])
    with pytest.raises(ValueError, match=r"load_best_model_at_end=True with layer fading"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list(tmp_path.glob("checkpoint-*"))   # refused before step 1
