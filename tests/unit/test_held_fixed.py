"""Jacobians with parts held fixed against an independent computation, for every supported family.

The reference (tests/reference.py) differentiates a plain, uncached forward of the whole prompt with
transformers' own eager attention and norms; the parts are held fixed there by hand, by replacing the
torch functions that code calls for the duration of the reference: ``softmax`` returns a detached
result (attention), ``rsqrt`` a detached scale (RMSNorm) and ``layer_norm`` a centring times a detached
1 / σ (LayerNorm).
"""

import contextlib
from unittest import mock

import pytest
import torch
from reference import full_forward_map, relative_error
from tiny_models import tiny_family

from lre_pl.dataset.prompts import encode_prompt, make_prompt
from lre_pl.dataset.relations import load_relation
from lre_pl.errors import InputError
from lre_pl.lm.held_fixed import block_norms, held_scale_norm
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import ADAPTERS

WAYS = [frozenset(), frozenset({"attention"}), frozenset({"norms"}), frozenset({"attention", "norms"})]
LAYERS = ["emb", 0]


@contextlib.contextmanager
def held_fixed_by_hand(parts: frozenset):
    """The torch functions of transformers' eager attention and norms, with ``parts`` detached."""
    F = torch.nn.functional
    softmax, rsqrt = F.softmax, torch.rsqrt

    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        centred = x - x.mean(-1, keepdim=True)
        x = centred * rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps).detach()
        return x * weight + bias

    patches = []
    if "attention" in parts:
        patches.append(mock.patch.object(F, "softmax", lambda *a, **k: softmax(*a, **k).detach()))
    if "norms" in parts:
        patches += [
            mock.patch.object(torch, "rsqrt", lambda x: rsqrt(x).detach()),
            mock.patch.object(F, "layer_norm", layer_norm),
        ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def reference_held_fixed(lm, prompt, layer, parts) -> torch.Tensor:
    """J [d, d] by plain autograd of the full prompt's forward, ``parts`` detached by hand."""
    function, state = full_forward_map(lm, prompt, layer)
    with held_fixed_by_hand(parts):
        return torch.autograd.functional.jacobian(function, state, vectorize=True)


def few_shot_prompts(lm):
    """Prompts with 0 and 3 examples: different prefix and suffix lengths, longer than Gemma's sliding
    window."""
    relation = load_relation("country capital city")
    samples, template = relation.samples, relation.prompt_templates[0]
    prefix = lm.tokenizer.eos_token if lm.adapter.prepend_eos else ""
    return [
        encode_prompt(lm.tokenizer, make_prompt(template, samples[i].subject, samples[5 : 5 + shots], prefix))
        for i, shots in enumerate((0, 3))
    ]


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def family(request):
    lm = tiny_family(request.param)
    return lm, few_shot_prompts(lm)


def test_every_family_and_way_matches_autograd_with_detach_by_hand(family):
    """Each prompt in a batch of its own: batches of prompts with own prefixes of different lengths put
    padding inside the key/value cache, which a sliding window shorter than the prompt (the tiny
    Gemma's) counts as tokens (a gap of the engine itself, plain Jacobians included; batching is
    checked below on Llama and in test_jacobian.py)."""
    lm, prompts = family
    for row, prompt in enumerate(prompts):
        results = {way: compute_jacobians(lm, [prompt], LAYERS, held_fixed=way) for way in WAYS}
        plain = results[frozenset()]
        for way, result in results.items():
            torch.testing.assert_close(result.output_states, plain.output_states)  # the same forward
            for layer in LAYERS:
                torch.testing.assert_close(result.subject_states[layer], plain.subject_states[layer])
                expected = reference_held_fixed(lm, prompt, layer, way)
                actual = result.jacobians[layer][0]
                where = f"{sorted(way)} layer {layer} prompt {row}"
                torch.testing.assert_close(
                    actual, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4,
                    msg=lambda message, where=where: f"{where}: {message}",
                )  # fmt: skip
                # Holding a part fixed changes J (by ten times the tolerance): the comparison could fail.
                if way:
                    assert relative_error(actual, plain.jacobians[layer][0]) > 1e-3, (way, layer, row)


def test_a_batch_holds_fixed_like_each_prompt_alone(llama):
    prompts = few_shot_prompts(llama)
    both = frozenset({"attention", "norms"})
    batched = compute_jacobians(llama, prompts, LAYERS, chunk_size=13, held_fixed=both)
    for row, prompt in enumerate(prompts):
        alone = compute_jacobians(llama, [prompt], LAYERS, held_fixed=both)
        for layer in LAYERS:
            torch.testing.assert_close(
                batched.jacobians[layer][row], alone.jacobians[layer][0], atol=1e-5, rtol=1e-4
            )


def test_held_scale_norms_compute_the_modules_own_values(family):
    lm, _ = family
    hidden = torch.randn(3, 5, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    for module in block_norms(lm):
        dim = module.weight.shape[-1]  # Gemma's q/k norms act on one head
        x = hidden.reshape(-1, dim)
        torch.testing.assert_close(held_scale_norm(lm.adapter.norm, module, x), module(x))


@pytest.mark.parametrize(
    ("model_type", "per_block"),
    [
        ("gpt2", 2),
        ("gptj", 1),
        ("gpt_neox", 2),
        ("llama", 2),
        ("mistral", 2),
        ("qwen2", 2),
        ("gemma3_text", 6),
    ],
)
def test_every_norm_of_the_blocks_is_held(model_type, per_block):
    """Gemma 3: input, post-attention, pre- and post-feed-forward norms, and the q and k norms."""
    lm = tiny_family(model_type)
    assert len(block_norms(lm)) == per_block * lm.num_blocks
    assert not any("forward" in vars(m) for m in block_norms(lm))  # nothing left patched by other tests


def test_attention_outside_the_attention_interface_is_refused(llama, monkeypatch):
    """A family whose attention does not go through transformers' attention interface (here: Llama made
    to call its eager code directly) would give the plain Jacobian with attention "held fixed"."""
    from transformers.models.llama import modeling_llama

    class Bypassing:
        @staticmethod
        def get_interface(name, default):
            return modeling_llama.eager_attention_forward

    monkeypatch.setattr(modeling_llama, "ALL_ATTENTION_FUNCTIONS", Bypassing())
    prompts = few_shot_prompts(llama)[:1]
    with pytest.raises(InputError) as error:
        compute_jacobians(llama, prompts, [0], held_fixed={"attention"})
    assert str(error.value) == (
        "cannot hold attention fixed for 'llama': its attention ran through transformers' attention interface "
        "in 0 of 3 blocks; hold only the norms fixed"
    )
    compute_jacobians(llama, prompts, [0], held_fixed={"norms"})  # the norms do not need the interface


def test_an_unknown_part_is_a_one_line_error(llama):
    with pytest.raises(InputError) as error:
        compute_jacobians(llama, few_shot_prompts(llama)[:1], [0], held_fixed={"mlp", "norms"})
    assert str(error.value) == "cannot hold 'mlp' fixed in a Jacobian: use a subset of attention, norms"
