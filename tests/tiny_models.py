"""Tiny random models and a byte-level BPE tokenizer built in code (no download)."""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lre_pl.dataset.relations import load_relation
from lre_pl.lm.models import LanguageModel

_CORPUS_RELATIONS = ("country capital city", "country language", "adjective antonym", "fruit inside color")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few relations, so subjects split into several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = []
    for name in _CORPUS_RELATIONS:
        relation = load_relation(name)
        corpus += [f"{relation.prompt_templates[0].format(s.subject)} {s.object}" for s in relation.samples]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def tiny_llama(hidden: int = 48, blocks: int = 3, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=blocks,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    return LanguageModel(LlamaForCausalLM(config), tokenizer, "tiny-llama")


def tiny_gpt2(hidden: int = 32, blocks: int = 2, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=blocks,
        n_head=4,
        n_positions=512,
        attn_implementation="eager",
    )
    return LanguageModel(GPT2LMHeadModel(config), tokenizer, "tiny-gpt2")


def _family_configs(vocab: int, hidden: int, blocks: int) -> dict:
    """model_type -> (model class, config) of a tiny random model of each family beyond Llama and GPT-2."""
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

    common = {"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": blocks, "num_attention_heads": 4,
              "intermediate_size": 2 * hidden, "max_position_embeddings": 512, "attn_implementation": "eager"}  # fmt: skip
    return {
        "gptj": (
            GPTJForCausalLM,
            GPTJConfig(
                vocab_size=vocab,
                n_embd=hidden,
                n_layer=blocks,
                n_head=4,
                rotary_dim=4,
                n_positions=512,
                bos_token_id=0,
                eos_token_id=0,
                attn_implementation="eager",
            ),
        ),  # fmt: skip
        "gpt_neox": (GPTNeoXForCausalLM, GPTNeoXConfig(**common)),
        "mistral": (MistralForCausalLM, MistralConfig(**common, num_key_value_heads=2)),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, num_key_value_heads=2)),
        # A sliding window shorter than the few-shot prompts, on the first of the two layers.
        "gemma3_text": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                **common,
                num_key_value_heads=1,
                head_dim=16,
                sliding_window=6,
                layer_types=["sliding_attention", "full_attention"][:blocks],
            ),
        ),  # fmt: skip
    }


def tiny_family(model_type: str, hidden: int = 32, blocks: int = 2, seed: int = 0) -> LanguageModel:
    """A tiny random model of family ``model_type`` (a key of ``lre_pl.lm.models.ADAPTERS``)."""
    if model_type == "llama":
        return tiny_llama(hidden, blocks, seed)
    if model_type == "gpt2":
        return tiny_gpt2(hidden, blocks, seed)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    cls, config = _family_configs(len(tokenizer), hidden, blocks)[model_type]
    return LanguageModel(cls(config), tokenizer, f"tiny-{model_type}")
