"""The engine's J against an independent full-forward autograd Jacobian (tests/reference.py)."""

import copy

import pytest
import torch
from reference import full_forward_map, reference_jacobian, relative_error

from lre_pl.dataset.prompts import encode_prompt, fill_subject, make_prompt
from lre_pl.dataset.relations import load_relation
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import LanguageModel


def _prompts(lm):
    relation = load_relation("country capital city")
    template = relation.prompt_templates[0]
    prefix = lm.tokenizer.eos_token if lm.adapter.prepend_eos else ""
    samples = relation.samples
    prompts = [  # different numbers of examples: different prefix and suffix lengths, so padding on both sides
        encode_prompt(lm.tokenizer, make_prompt(template, s.subject, samples[i + 1 : i + 1 + i], prefix))
        for i, s in enumerate(samples[:3])
    ]
    prompts.append(
        encode_prompt(lm.tokenizer, fill_subject("{} has the capital", samples[7].subject, prefix))
    )
    return prompts


def _subject_at_zero(lm):
    subject = next(t for t in ("The", "F") if len(lm.tokenizer(t)["input_ids"]) == 1)
    return encode_prompt(lm.tokenizer, fill_subject("{} capital of France is", subject))


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_every_layer_matches_full_forward_autograd(model, request):
    lm = request.getfixturevalue(model)
    prompts = _prompts(lm)
    layers = ["emb", *range(lm.num_blocks)]
    batched = compute_jacobians(lm, prompts, layers, chunk_size=13)
    for row, prompt in enumerate(prompts):
        alone = compute_jacobians(lm, [prompt], layers)
        for layer in layers:
            expected, output = reference_jacobian(lm, prompt, layer)
            assert expected.norm() > 0 or layer == lm.num_blocks - 1
            if expected.norm() > 0:
                assert relative_error(batched.jacobians[layer][row], expected) < 1e-4, (row, layer)
                assert relative_error(alone.jacobians[layer][0], expected) < 1e-4, (row, layer)
            torch.testing.assert_close(batched.output_states[row], output, atol=1e-5, rtol=1e-4)


def test_last_block_jacobian_is_zero_unless_subject_is_last(llama):
    prompt = _prompts(llama)[0]
    result = compute_jacobians(llama, [prompt], [llama.num_blocks - 1])
    assert result.jacobians[llama.num_blocks - 1].abs().max() == 0


def test_subject_at_position_zero_has_no_prefix_cache(llama):
    prompt = _subject_at_zero(llama)
    assert prompt.subject_index == 0
    mixed = [prompt, *_prompts(llama)[:2]]  # in a batch with prompts that do have a prefix
    for batch in ([prompt], mixed):
        result = compute_jacobians(llama, batch, ["emb", 1])
        for layer in ("emb", 1):
            expected, _ = reference_jacobian(llama, prompt, layer)
            assert relative_error(result.jacobians[layer][0], expected) < 1e-4


def test_bias_and_states_are_consistent(gpt2):
    prompt = _prompts(gpt2)[1]
    result = compute_jacobians(gpt2, [prompt], [0])
    state, jacobian = result.subject_states[0][0], result.jacobians[0][0]
    torch.testing.assert_close(result.biases(0)[0], result.output_states[0] - jacobian @ state)


def test_jacobian_matches_finite_differences_in_float64(gpt2):
    """A check that shares no autograd with the engine: central differences on a float64 copy.

    GPT-2 because its norms and softmax compute in the input dtype (Llama's upcast to float32).
    """
    lm = LanguageModel(copy.deepcopy(gpt2.model).double(), gpt2.tokenizer, "tiny-gpt2-f64")
    prompt = _prompts(lm)[1]
    function, state = full_forward_map(lm, prompt, 0)
    engine = compute_jacobians(lm, [prompt], [0]).jacobians[0][0]
    eps = 1e-6
    columns = []
    with torch.no_grad():
        for j in range(state.shape[0]):
            step = torch.zeros_like(state)
            step[j] = eps
            columns.append((function(state + step) - function(state - step)) / (2 * eps))
    finite = torch.stack(columns, dim=1)
    assert relative_error(engine, finite) < 1e-7


def test_layer_out_of_range_is_a_clear_error(llama):
    with pytest.raises(ValueError, match=r"layer 7 is out of range .* 0\.\.2"):
        compute_jacobians(llama, _prompts(llama)[:1], [7])


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_attention_takes_the_cache_parts_not_slices_of_the_joined_keys(model, request, monkeypatch):
    """The speed path (``CacheParts``): every block's attention gets the prefix and suffix keys and values
    as the cache joined them, and J equals the slicing path's."""
    from lre_pl.lm import jacobian

    lm = request.getfixturevalue(model)
    prompts = _prompts(lm)
    taken = []
    split = jacobian.CacheParts.split

    def counted(self, key, value):
        parts = split(self, key, value)
        taken.append(parts is not None)
        return parts

    monkeypatch.setattr(jacobian.CacheParts, "split", counted)
    fast = compute_jacobians(lm, prompts, ["emb", 1], chunk_size=13)
    assert taken == [True] * lm.num_blocks  # one forward, each block's attention once
    monkeypatch.setattr(jacobian.CacheParts, "split", lambda self, key, value: None)
    sliced = compute_jacobians(lm, prompts, ["emb", 1], chunk_size=13)
    for layer in ("emb", 1):
        torch.testing.assert_close(fast.jacobians[layer], sliced.jacobians[layer], atol=1e-6, rtol=1e-5)
    assert jacobian.cache_parts.last is None  # nothing kept after the pass
