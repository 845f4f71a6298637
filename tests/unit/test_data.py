import pytest
import torch

from lre_pl.dataset.relations import Relation, RelationSample, load_relation
from lre_pl.errors import InputError
from lre_pl.lightning.datamodule import (
    RelationPrompts,
    check_trial,
    filter_known,
    object_token_id,
    split_samples,
)


def test_split_is_seeded_and_round_robin_over_objects():
    samples = [RelationSample(f"s{i}", obj) for i, obj in enumerate("aaaaaabbbc")]
    train, test = split_samples(samples, 4, seed=3)
    assert sorted(s.object for s in train) == ["a", "a", "b", "c"]  # every object before any repeat
    assert sorted(map(id, train + test)) == sorted(map(id, samples)) and not set(map(id, train)) & set(
        map(id, test)
    )
    assert split_samples(samples, 4, seed=3) == (train, test)
    assert split_samples(samples, 4, seed=4) != (train, test)


def _relation(samples, duplicates=0):
    return Relation(
        name="toy", category="unknown", prompt_templates=("{} is",), prompt_templates_zs=(), domain_name="",
        range_name="", symmetric=False, source="toy.json", samples=tuple(samples), duplicates_dropped=duplicates,
    )  # fmt: skip


@pytest.mark.parametrize("n_train", [0, 10, 11])
def test_impossible_n_train_is_a_one_line_error(n_train):
    relation = _relation(RelationSample(f"s{i}", "o") for i in range(10))
    with pytest.raises(
        InputError, match=rf"n_train={n_train} must be between 1 and 9: relation 'toy' has 10 samples$"
    ):
        check_trial(relation, n_train)


def test_a_relation_of_duplicates_says_how_many_were_dropped(tmp_path):
    path = tmp_path / "dups.json"
    path.write_text(
        '{"name": "dups", "prompt_templates": ["{} is"], "samples": ['
        + ", ".join(['{"subject": "a", "object": "b"}'] * 4)
        + "]}"
    )
    relation = load_relation(str(path))
    assert relation.duplicates_dropped == 3 and len(relation.samples) == 1
    with pytest.raises(
        InputError, match=r"has 1 distinct sample \(3 duplicate samples dropped\): an LRE needs at least 2"
    ):
        check_trial(relation, 5)
    relation = _relation([RelationSample("a", "b"), RelationSample("c", "d")], duplicates=2)
    with pytest.raises(
        InputError,
        match=r"n_train=2 must be between 1 and 1: .* has 2 samples \(2 duplicate samples dropped\)",
    ):
        check_trial(relation, 2)


def test_template_index_out_of_range():
    with pytest.raises(InputError, match=r"template_index=1 out of range: 'toy' has 1 templates \(0..0\)"):
        check_trial(_relation([RelationSample("a", "b"), RelationSample("c", "d")]), 1, template_index=1)


def test_training_prompts_hold_the_other_samples_and_test_prompts_all(gpt2):
    relation = load_relation("country capital city")
    prompts = RelationPrompts.build(relation, gpt2, n_train=3, seed=0)
    subjects = [item.sample.subject for item in prompts.train]
    for item in prompts.train:
        lines = item.prompt.text.split("\n")
        assert lines[0].startswith("<|endoftext|>The")  # GPT-style models: end-of-text prefix, no space
        assert len(lines) == 3 and lines[-1] == relation.prompt_templates[0].format(item.sample.subject)
        assert sum(subject in item.prompt.text for subject in subjects) == 3
    test_lines = prompts.test_prompts[0].text.split("\n")
    assert len(test_lines) == 4 and test_lines[-1].endswith(f"{prompts.test_samples[0].subject} is")
    assert len(prompts.test_samples) == len(relation.samples) - 3


def test_object_token_is_the_token_after_the_prompt(llama):
    prompt = "The capital of France is"
    token = object_token_id(llama.tokenizer, prompt, "Paris")
    full = llama.tokenizer(prompt + " Paris")["input_ids"]
    assert token == full[len(llama.tokenizer(prompt)["input_ids"])]
    assert llama.tokenizer.decode([token]).strip() in "Paris"


def test_too_few_known_samples_is_an_error_not_a_zero_metric(llama):
    prompts = RelationPrompts.build(load_relation("country capital city"), llama, n_train=5, seed=0)
    with pytest.raises(
        InputError, match=r"only 0 of 19 test samples .* are known to tiny-llama \(min_known=1\)"
    ):
        filter_known(llama, prompts, batch_size=8, min_known=1)
    every = filter_known(llama, prompts, batch_size=8, min_known=1, keep_all=True)
    assert len(every.samples) == 19 and every.lm_accuracy == 0.0
    assert every.states.subject_states.shape == (19, llama.num_blocks + 1, llama.hidden_size)


def test_known_filter_uses_the_lm_prediction(llama, monkeypatch):
    """Objects rewritten to the tiny LM's own answers: exactly those samples are known."""
    import lre_pl.lightning.datamodule as data

    prompts = RelationPrompts.build(load_relation("country capital city"), llama, n_train=5, seed=0)
    states = data.collect_states(llama, prompts.test_prompts, batch_size=4)
    answers = llama.token_strings(states.top_token_ids)
    chosen = {0, 3, 7}
    rewritten = [
        RelationSample(s.subject, answers[i].strip() + "x" if i in chosen else "\u2603")
        for i, s in enumerate(prompts.test_samples)
    ]
    prompts = RelationPrompts(
        prompts.relation, prompts.train, rewritten, prompts.test_prompts, prompts.test_prompt_template
    )
    known = filter_known(llama, prompts, batch_size=5, min_known=3)
    assert [s.subject for s in known.samples] == [rewritten[i].subject for i in sorted(chosen)]
    assert known.lm_accuracy == pytest.approx(3 / 19)
    assert known.is_known == [True] * 3
    everything = filter_known(llama, prompts, batch_size=5, min_known=3, keep_all=True)
    assert everything.is_known == [i in chosen for i in range(len(rewritten))]
    torch.testing.assert_close(known.states.subject_states[1], states.subject_states[3])
