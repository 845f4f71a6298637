import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lre_pl.errors import InputError
from lre_pl.models import ADAPTERS, LanguageModel, adapter_for, resolve_model_spec

SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
FAMILIES = [
    (GPTJForCausalLM, GPTJConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)),
    (GPTNeoXForCausalLM, GPTNeoXConfig(**SMALL)),
    (MistralForCausalLM, MistralConfig(**SMALL, num_key_value_heads=2)),
    (Qwen2ForCausalLM, Qwen2Config(**SMALL, num_key_value_heads=2)),
    (Gemma3ForCausalLM, Gemma3TextConfig(**SMALL, num_key_value_heads=1, head_dim=8)),
]


@pytest.mark.parametrize(("cls", "config"), FAMILIES, ids=lambda x: getattr(x, "__name__", ""))
def test_adapter_names_the_real_modules(cls, config, llama):
    model = cls(config)
    lm = LanguageModel(model, llama.tokenizer, cls.__name__)
    assert lm.num_blocks == 2 and lm.hidden_size == 32
    assert lm.unembedding.weight.shape == (64, 32)
    assert lm.token_embedding.weight.shape == (64, 32)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
        hidden = {}
        handle = lm.blocks[-1].register_forward_hook(lambda m, a, o: hidden.update(o=o[0, -1]) or None)
        lm.base_model(input_ids=ids)
        handle.remove()
    torch.testing.assert_close(lm.decode(hidden["o"]), logits, atol=1e-4, rtol=1e-4)


def test_unsupported_architecture_lists_the_supported_ones():
    class Bert(torch.nn.Module):
        config = type("Config", (), {"model_type": "bert"})()

    with pytest.raises(
        InputError,
        match=r"unsupported architecture 'bert': lre_pl supports gemma3_text, gpt2, gpt_neox, gptj, llama, mistral, qwen2; add",
    ):
        adapter_for(Bert())
    assert set(ADAPTERS) >= {"gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text"}


@pytest.mark.parametrize("layer", [3, -4, "ten", "embedding"])
def test_layer_out_of_range(llama, layer):
    with pytest.raises(
        InputError,
        match=rf"layer {layer!r} is out of range for tiny-llama: use 'emb' or a block index 0\.\.2",
    ):
        llama.check_layer(layer)
    assert llama.check_layer(-1) == 2 and llama.check_layer("emb") == "emb" and llama.check_layer("1") == 1


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="GGUF file .*nothing.gguf' does not exist"):
        resolve_model_spec(str(tmp_path / "nothing.gguf"))
