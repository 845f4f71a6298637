import re

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
from lre_pl.lm.hooks import capture
from lre_pl.lm.models import (
    ADAPTERS,
    LanguageModel,
    adapter_for,
    check_dtype,
    check_model_spec,
    resolve_model_spec,
)

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
        with capture({"o": lm.blocks[-1]}, lambda _, output: output[0, -1]) as hidden:
            lm.base_model(input_ids=ids)
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


@pytest.mark.parametrize("layer", [3, -4, "3"])
def test_layer_out_of_range(llama, layer):
    with pytest.raises(
        InputError,
        match=rf"layer {int(layer)} is out of range for tiny-llama: use 'emb' or a block index 0\.\.2",
    ):
        llama.check_layer(layer)
    assert llama.check_layer(-1) == 2 and llama.check_layer("emb") == "emb" and llama.check_layer("1") == 1


@pytest.mark.parametrize("layer", ["ten", "embedding", "", 1.5, None, True])
def test_a_non_numeric_layer_is_not_called_out_of_range(llama, layer):
    with pytest.raises(InputError, match=rf"^layer {re.escape(repr(layer))} is not a layer: use 'emb'"):
        llama.check_layer(layer)


def test_state_index_normalises_negative_layers(llama):
    # Stacks of states are ordered [emb, block 0, block 1, block 2]: block -1 is the last, never emb.
    assert [llama.state_index(layer) for layer in ("emb", 0, 2, -1, -3)] == [0, 1, 3, 3, 1]
    with pytest.raises(InputError, match="out of range"):
        llama.state_index(-4)


@pytest.mark.parametrize("dtype", ["float64x", "int32", "nn"])
def test_bad_dtype(dtype):
    with pytest.raises(InputError, match=rf"dtype '{dtype}' is not a floating-point torch dtype"):
        check_dtype(dtype)
    assert check_dtype("bfloat16") is torch.bfloat16


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="GGUF file .*nothing.gguf' does not exist"):
        resolve_model_spec(str(tmp_path / "nothing.gguf"))


def test_an_unknown_model_spec_fails_fast_without_the_hub(monkeypatch):
    """No 54 s of retries: the hub is asked once, with a short timeout, and the error says what to give."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(InputError) as error:
        check_model_spec("lre-pl-tests/no-such-model-4f1c")
    assert time.perf_counter() - started < 15
    message = str(error.value)
    assert message.startswith(
        "model 'lre-pl-tests/no-such-model-4f1c' is not an embedded model (smollm2-135m, gemma3-270m), a .gguf "
        "file or a local directory"
    )
    assert "hub is unreachable" in message or "nor a model on the Hugging Face hub" in message
    with pytest.raises(InputError, match="nor a valid hub name"):
        check_model_spec("not a/valid//name")


def test_an_uncached_hub_model_offline_says_so(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    check_model_spec.cache_clear()
    with pytest.raises(InputError, match="not in the hub cache while HF_HUB_OFFLINE is set"):
        check_model_spec("lre-pl-tests/offline-model")


@pytest.mark.parametrize("family", [*(cls.__name__ for cls, _ in FAMILIES), "llama", "gpt2"])
def test_a_forward_resumed_after_a_layer_equals_the_edited_full_forward(family, llama, gpt2):
    """``SuffixRun.forward_from`` skips the layers up to the edit by replacing their forwards; each
    family's blocks must return the bare hidden tensor for that (and the cache must still line up)."""
    from lre_pl.dataset.prompts import EncodedPrompt
    from lre_pl.lm.suffix import SuffixRun, add_at_subject

    built = {cls.__name__: (cls, config) for cls, config in FAMILIES}
    if family in built:
        cls, config = built[family]
        lm = LanguageModel(cls(config), llama.tokenizer, family)
    else:
        lm = {"llama": llama, "gpt2": gpt2}[family]
    prompts = [
        EncodedPrompt("", (1, 5, 6, 7, 8, 9, 10), 4),  # a shared prefix, then different lengths
        EncodedPrompt("", (1, 5, 6, 11, 12, 13), 3),
        EncodedPrompt("", (1, 5, 6, 14, 15, 16, 17, 18), 5),
    ]
    run = SuffixRun.prepare(lm, prompts)
    delta = torch.randn(len(prompts), lm.hidden_size, generator=torch.Generator().manual_seed(0))
    for layer in lm.layer_names():
        with torch.no_grad():
            expected = run.forward(lambda _, hidden: add_at_subject(hidden, delta), [layer])
            unedited = run.layer_outputs([layer])[layer]  # [batch, suffix, d]
            resumed = run.forward_from(layer, add_at_subject(unedited, delta))
        torch.testing.assert_close(resumed, expected, atol=1e-5, rtol=1e-4, msg=f"layer {layer}")
        assert not any("forward" in vars(m) for m in (lm.token_embedding, *lm.blocks))  # restored
