import pytest
import torch

from lre_pl.dataset.prompts import (
    EncodedPrompt,
    PromptText,
    encode_prompt,
    fill_subject,
    make_prompt,
    pad_left,
)
from lre_pl.dataset.relations import Relation, RelationSample, load_relation
from lre_pl.errors import InputError
from lre_pl.lightning.datamodule import RelationPrompts
from lre_pl.lm.activations import collect_states
from lre_pl.lm.suffix import shared_prefix_length


def test_make_prompt_few_shot_layout_and_subject_span():
    examples = [RelationSample("France", "Paris"), RelationSample("Peru", "Lima")]
    prompt = make_prompt("The capital of {} is", "Chile", examples, prefix="<|endoftext|>")
    assert (
        prompt.text
        == "<|endoftext|>The capital of France is Paris\nThe capital of Peru is Lima\nThe capital of Chile is"
    )
    assert prompt.text[prompt.subject_start : prompt.subject_end] == "Chile"


def _tokens_up_to(tokenizer, prompt: PromptText) -> int:
    """Independent subject index: the tokens of the text up to the subject's end, minus one."""
    return len(tokenizer(prompt.text[: prompt.subject_end])["input_ids"]) - 1


@pytest.mark.parametrize(
    ("template", "subject", "examples"),
    [
        ("The capital of {} is", "France", []),  # leading space inside the subject's token
        ("The capital of {} is", "France", [RelationSample("France", "Paris")]),  # the query's occurrence
        ("The capital of {} is", "United States", []),  # multi-token subject
        ("The opposite of {} is", "good", []),
    ],
)
def test_subject_index_matches_tokenizing_up_to_the_subject(llama, template, subject, examples):
    prompt = make_prompt(template, subject, examples)
    assert encode_prompt(llama.tokenizer, prompt).subject_index == _tokens_up_to(llama.tokenizer, prompt)


def _first_token_by_decoding(tokenizer, encoded, prompt: PromptText) -> int:
    """Independent first subject token: the first token whose decoded prefix of the prompt reaches past
    the subject's first character (no offsets involved)."""
    ids = encoded.input_ids
    return next(i for i in range(len(ids)) if len(tokenizer.decode(ids[: i + 1])) > prompt.subject_start)


@pytest.mark.parametrize(
    ("template", "subject", "examples"),
    [
        ("The capital of {} is", "France", [RelationSample("France", "Paris")]),
        ("The capital of {} is", "United States", []),
        ("{} capital of France is", "United States", []),  # the subject opens the prompt
        ("The opposite of {} is", "good", []),
    ],
)
def test_subject_first_index_and_token_count_match_decoding(llama, template, subject, examples):
    tokenizer = llama.tokenizer
    prompt = make_prompt(template, subject, examples)
    encoded = encode_prompt(tokenizer, prompt)
    assert encoded.subject_first_index == _first_token_by_decoding(tokenizer, encoded, prompt)
    spanned = tokenizer.decode(encoded.input_ids[encoded.subject_first_index : encoded.subject_index + 1])
    assert spanned.strip() == subject
    assert subject not in tokenizer.decode(
        encoded.input_ids[encoded.subject_first_index + 1 : encoded.subject_index + 1]
    )


def test_united_states_spans_several_tokens_and_a_hand_built_prompt_has_no_count(llama):
    encoded = encode_prompt(llama.tokenizer, fill_subject("The capital of {} is", "United States"))
    assert encoded.subject_tokens == 8  # the tiny tokenizer: "U", "n", "ite", "d", "ĠS", "t", "at", "es"
    with pytest.raises(
        ValueError, match="does not know its subject's first token: build it with encode_prompt"
    ):
        _ = EncodedPrompt("x", (1, 2), 1).subject_tokens


def test_subject_inside_a_later_word_is_placed_by_its_slot(llama):
    # "cat" also occurs inside "category", after the slot: searching the text found the wrong one.
    prompt = make_prompt("A {} is in the category of a", "cat", [RelationSample("dog", "animal")])
    assert prompt.text.rfind("cat") > prompt.subject_start  # what rfind would have picked
    encoded = encode_prompt(llama.tokenizer, prompt)
    assert encoded.subject_index == _tokens_up_to(llama.tokenizer, prompt)
    begin, end = llama.tokenizer(prompt.text, return_offsets_mapping=True)["offset_mapping"][
        encoded.subject_index
    ]
    assert begin < prompt.subject_end <= end < prompt.text.rindex("category")


def test_relation_prompts_place_cat_before_category(llama):
    relation = load_relation("object superclass")
    prompts = RelationPrompts.build(relation, llama, n_train=5, seed=0)
    cat = next(i for i, s in enumerate(prompts.test_samples) if s.subject == "cat")
    prompt = prompts.test_prompts[cat]
    slot = prompt.text.rindex("A cat is in the category") + len("A cat")
    assert prompt.subject_index == len(llama.tokenizer(prompt.text[:slot])["input_ids"]) - 1


@pytest.mark.parametrize("subject", ["{}", "x{0}y", "{subject}", "a}b{"])
def test_subjects_and_objects_are_data_not_format_strings(llama, subject):
    examples = [RelationSample("{0}", "{}")]
    prompt = make_prompt("The capital of {} is", subject, examples)
    assert prompt.text == f"The capital of {{0}} is {{}}\nThe capital of {subject} is"
    assert prompt.text[prompt.subject_start : prompt.subject_end] == subject
    encoded = encode_prompt(llama.tokenizer, prompt)
    assert encoded.subject_index == _tokens_up_to(llama.tokenizer, prompt)


def test_gpt_style_prompts_start_with_end_of_text_and_no_space(gpt2):
    """Exact token ids: [eos] + the prompt's own tokens, as the paper's maybe_prefix_eos builds it."""
    tokenizer = gpt2.tokenizer
    relation = load_relation("country capital city")
    prompts = RelationPrompts.build(relation, gpt2, n_train=3, seed=0)
    eos = tokenizer.eos_token_id
    for encoded in [item.prompt for item in prompts.train] + prompts.test_prompts[:3]:
        assert encoded.text.startswith("<|endoftext|>The capital city of ")
        body = encoded.text[len("<|endoftext|>") :]
        assert list(encoded.input_ids) == [eos, *tokenizer(body)["input_ids"]]
        assert not tokenizer.decode([encoded.input_ids[1]]).startswith(" ")
    train = prompts.train[0]
    expected = make_prompt(
        relation.prompt_templates[0],
        train.sample.subject,
        [item.sample for item in prompts.train[1:]],
        prefix="<|endoftext|>",
    )
    assert train.prompt.subject_index == _tokens_up_to(tokenizer, expected)


def test_llama_style_prompts_get_no_prefix(llama):
    prompts = RelationPrompts.build(load_relation("country capital city"), llama, n_train=3, seed=0)
    assert prompts.train[0].prompt.text.startswith("The capital city of ")


def test_subject_index_at_position_zero(llama):
    tokenizer = llama.tokenizer
    subject = next(t for t in ("The", "F") if len(tokenizer(t)["input_ids"]) == 1)
    assert encode_prompt(tokenizer, fill_subject("{} capital of France is", subject)).subject_index == 0


def test_subject_token_merged_across_the_boundary(llama):
    # "Franc" ends inside the token that also holds "e": that token is the subject's last token.
    prompt = PromptText("The capital of France is", 15, 20)
    encoded = encode_prompt(llama.tokenizer, prompt)
    begin, end = llama.tokenizer(prompt.text, return_offsets_mapping=True)["offset_mapping"][
        encoded.subject_index
    ]
    assert begin <= 19 < end and end > 20  # the token really crosses the boundary


def test_template_without_slot_is_a_one_line_error():
    with pytest.raises(InputError, match=r"has no \{\} slot for the subject"):
        fill_subject("The capital of France is", "Spain")


def test_left_padding_keeps_subject_token_and_states(llama):
    prompts = [
        encode_prompt(llama.tokenizer, fill_subject("The capital of {} is", "France")),
        encode_prompt(llama.tokenizer, fill_subject("Peru is Lima\nThe capital of {} is", "United States")),
    ]
    batch = pad_left(prompts, llama.tokenizer.pad_token_id)
    for row, prompt in enumerate(prompts):
        assert batch.input_ids[row, batch.subject_index[row]] == prompt.input_ids[prompt.subject_index]
        assert batch.input_ids[row, -1] == prompt.input_ids[-1]
    assert batch.attention_mask[0].sum() == len(prompts[0].input_ids) < batch.input_ids.shape[1]
    together = collect_states(llama, prompts, batch_size=2)
    for row, prompt in enumerate(prompts):
        alone = collect_states(llama, [prompt], batch_size=1)
        torch.testing.assert_close(
            together.subject_states[row], alone.subject_states[0], atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(together.output_states[row], alone.output_states[0], atol=1e-5, rtol=1e-4)


def test_relation_with_braces_in_data_builds_prompts(llama):
    relation = Relation(
        name="braces", category="unknown", prompt_templates=("The code of {} is",), prompt_templates_zs=(),
        domain_name="", range_name="", symmetric=False, source="<test>",
        samples=tuple(RelationSample(s, o) for s, o in [("a{}", "x"), ("{0}b", "y"), ("c", "{z}"), ("d", "w")]),
    )  # fmt: skip
    prompts = RelationPrompts.build(relation, llama, n_train=2, seed=0)
    for sample, prompt in zip(prompts.test_samples, prompts.test_prompts):
        assert prompt.text.endswith(f"The code of {sample.subject} is")
    assert all(
        f"{item.sample.subject} is {item.sample.object}" in prompts.test_prompts[0].text
        for item in prompts.train
    )


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_collect_states_equal_a_full_forward_of_each_prompt(model, request):
    """The shared few-shot prefix runs once into a cache; every state must equal an uncached forward."""
    from reference import full_forward_map

    lm = request.getfixturevalue(model)
    template = "Peru: Lima\nChad: N'Djamena\nThe capital of {} is"
    subjects = ["France", "United States", "Fr", "Saint Kitts and Nevis", "Chile"]
    prompts = [encode_prompt(lm.tokenizer, fill_subject(template, s)) for s in subjects]
    assert shared_prefix_length(prompts) >= 8  # the cached part is real
    states = collect_states(lm, prompts, batch_size=2)  # the last batch is topped up
    assert states.subject_states.shape == (len(prompts), lm.num_blocks + 1, lm.hidden_size)
    for row, prompt in enumerate(prompts):
        for layer in ("emb", 0, lm.num_blocks - 1):
            function, state = full_forward_map(lm, prompt, layer)
            torch.testing.assert_close(
                states.subject_states[row, lm.state_index(layer)], state, atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(states.output_states[row], function(state), atol=1e-5, rtol=1e-4)
