"""The multi-token LRE's W_t, b and earlier-token states against plain autograd over the full prompt (no
cache, no batching, no engine), on a tiny Llama whose tokenizer splits subjects into several tokens."""

import dataclasses

import pytest
import torch
from token_reference import autograd_jacobian, delta_map

from lre_pl.dataset.relations import load_relation
from lre_pl.errors import InputError
from lre_pl.experiments.beta_study.questions.subject_tokens import (
    TOKENS,
    at_token,
    earlier_states,
    fit_multi_token_lre,
    token_group,
    token_presence,
)
from lre_pl.lightning.datamodule import RelationPrompts
from lre_pl.lm.jacobian import compute_jacobians

LAYER = 1


@pytest.fixture(scope="module")
def prompts(llama):
    return RelationPrompts.build(load_relation("adjective antonym"), llama, 5, 0)


def test_the_tiny_tokenizer_gives_subjects_of_every_token_group(prompts):
    counts = [item.prompt.subject_tokens for item in prompts.train]
    assert {token_group(c) for c in counts} == {"2", "3+"} and min(counts) >= 2
    assert {token_group(p.subject_tokens) for p in prompts.test_prompts} == {"1", "2", "3+"}


def test_the_engine_at_an_earlier_subject_token_is_the_partial_jacobian(llama, prompts):
    prompt = next(item.prompt for item in prompts.train if item.prompt.subject_tokens >= 3)
    for t in range(3):
        result = compute_jacobians(llama, [at_token(prompt, t)], [LAYER])
        expected, state, o = autograd_jacobian(llama, prompt, LAYER, prompt.subject_index - t)
        torch.testing.assert_close(result.jacobians[LAYER][0], expected, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(result.subject_states[LAYER][0], state, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.output_states[0], o, atol=1e-5, rtol=1e-4)
    # the three tokens' Jacobians differ: a test that mixed them up would fail
    first, last = (autograd_jacobian(llama, prompt, LAYER, prompt.subject_index - t)[0] for t in (2, 0))
    assert (first - last).norm() > 0.1 * last.norm()


def test_multi_token_weights_and_bias_against_per_token_autograd(llama, prompts):
    train = [item.prompt for item in prompts.train[2:]]  # 3, 7 and 2 tokens: W_2 is the mean of two
    per_sample = [
        [
            autograd_jacobian(llama, p, LAYER, p.subject_index - t)
            for t in range(min(p.subject_tokens, TOKENS))
        ]
        for p in train
    ]
    last_weight = torch.stack([sample[0][0] for sample in per_sample]).mean(0)
    last_states = torch.stack([sample[0][1] for sample in per_sample])
    outputs = torch.stack([sample[0][2] for sample in per_sample])
    lre = fit_multi_token_lre(llama, "adjective antonym", train, LAYER, last_weight, last_states, outputs)
    for t in range(TOKENS):
        having = [sample[t] for sample in per_sample if len(sample) > t]
        assert lre.samples[t] == len(having) == (3, 3, 2)[t]
        torch.testing.assert_close(
            lre.weights[t], torch.stack([j for j, _, _ in having]).mean(0), atol=1e-4, rtol=1e-3
        )
    readout = torch.stack(
        [sum(lre.weights[t] @ sample[t][1] for t in range(len(sample))) for sample in per_sample]
    )
    torch.testing.assert_close(lre.bias, (outputs - readout).mean(0), atol=1e-4, rtol=1e-3)


def test_a_token_no_training_subject_reaches_gets_a_zero_weight(llama, prompts):
    prompt, d = prompts.train[0].prompt, llama.hidden_size
    with torch.no_grad():
        o = delta_map(llama, prompt, LAYER, prompt.subject_index)[0](torch.zeros(d))[None]
    lre = fit_multi_token_lre(llama, "r", [prompt], LAYER, torch.eye(d), torch.zeros(1, d), o, tokens=12)
    count = prompt.subject_tokens
    assert lre.samples == tuple([1] * count + [0] * (12 - count))
    assert lre.weights[count:].abs().max() == 0 and lre.weights[count - 1].abs().max() > 0


def test_earlier_states_against_a_full_forward(llama, prompts):
    test = prompts.test_prompts[:6]
    o = torch.stack(
        [delta_map(llama, p, LAYER, p.subject_index)[0](torch.zeros(llama.hidden_size)) for p in test]
    )
    states, present = earlier_states(llama, "r", test, LAYER, o.detach())
    assert present.equal(token_presence([p.subject_tokens for p in test])[:, 1:])
    for k, prompt in enumerate(test):
        for t in range(1, TOKENS):
            expected = (
                delta_map(llama, prompt, LAYER, prompt.subject_index - t)[1]
                if present[k, t - 1]
                else 0 * o[k]
            )
            torch.testing.assert_close(states[k, t - 1], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="o of 'r''s prompts run again differ from its bundle's"):
        earlier_states(llama, "r", test, LAYER, o.detach() + 1)


def test_a_relation_of_one_token_subjects_is_one_line(llama, prompts):
    one_token = [
        dataclasses.replace(i.prompt, subject_first_index=i.prompt.subject_index) for i in prompts.train
    ]
    d = llama.hidden_size
    with pytest.raises(InputError) as raised:
        fit_multi_token_lre(
            llama, "adjective antonym", one_token, LAYER, torch.eye(d), torch.zeros(5, d), torch.zeros(5, d)
        )
    assert str(raised.value) == (
        "relation 'adjective antonym': all 5 training subjects are one token, and the multi-token LRE "
        "(question subject_tokens) needs subjects of two or more tokens: study a relation with longer subjects"
    )
