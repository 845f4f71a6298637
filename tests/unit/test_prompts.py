import pytest
import torch

from lre_pl.activations import collect_states
from lre_pl.errors import InputError
from lre_pl.prompts import encode_prompt, make_prompt, pad_left
from lre_pl.relations import RelationSample


def test_make_prompt_few_shot_layout():
    examples = [RelationSample("France", "Paris"), RelationSample("Peru", "Lima")]
    text = make_prompt("The capital of {} is", "Chile", examples, prefix="<|endoftext|> ")
    assert (
        text
        == "<|endoftext|> The capital of France is Paris\nThe capital of Peru is Lima\nThe capital of Chile is"
    )


def _independent_index(tokenizer, text: str, subject: str) -> int:
    """Tokens of the text up to the end of the subject's last occurrence, minus one."""
    end = text.rfind(subject) + len(subject)
    return len(tokenizer(text[:end])["input_ids"]) - 1


@pytest.mark.parametrize(
    ("text", "subject"),
    [
        ("The capital of France is", "France"),  # leading space inside the subject's token
        ("France is in Europe\nThe capital of France is", "France"),  # last occurrence wins
        ("The capital of United States is", "United States"),  # multi-token subject
        ("The opposite of good is", "good"),
    ],
)
def test_subject_index_matches_tokenizing_up_to_the_subject(llama, text, subject):
    prompt = encode_prompt(llama.tokenizer, text, subject)
    assert prompt.subject_index == _independent_index(llama.tokenizer, text, subject)


def test_subject_index_at_position_zero(llama):
    tokenizer = llama.tokenizer
    subject = next(t for t in ("The", "F") if len(tokenizer(t)["input_ids"]) == 1)
    prompt = encode_prompt(tokenizer, f"{subject} capital of France is", subject)
    assert prompt.subject_index == 0


def test_subject_token_merged_across_the_boundary(llama):
    # "Franc" ends inside the token that also holds "e": that token is the subject's last token.
    text = "The capital of France is"
    prompt = encode_prompt(llama.tokenizer, text, "Franc")
    encoding = llama.tokenizer(text, return_offsets_mapping=True)
    begin, end = encoding["offset_mapping"][prompt.subject_index]
    assert begin <= text.rfind("Franc") + len("Franc") - 1 < end
    assert end > text.rfind("Franc") + len("Franc")  # the token really crosses the boundary


def test_subject_not_found_is_a_one_line_error(llama):
    with pytest.raises(InputError, match="subject 'Spain' not found in the prompt") as error:
        encode_prompt(llama.tokenizer, "The capital of France is", "Spain")
    assert "\n" not in str(error.value).replace("\\n", "")


def test_left_padding_keeps_subject_token_and_states(llama):
    texts = [
        ("The capital of France is", "France"),
        ("Peru is Lima\nThe capital of United States is", "United States"),
    ]
    prompts = [encode_prompt(llama.tokenizer, text, subject) for text, subject in texts]
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
