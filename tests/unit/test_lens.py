"""The attribute lens against independent computations: plain forwards with every hidden state, the
operator's own prediction, a planted linear relation, and its figure's and table's content."""

import pytest
import torch
from tiny_models import tiny_gpt2

from lre_pl.dataset.prompts import encode_prompt, fill_subject
from lre_pl.errors import InputError
from lre_pl.evaluation.lens import attribute_lens, short
from lre_pl.lre.operator import LinearRelationOperator

TEMPLATE = "The capital city of {} is"


def operator(lm, layer, seed=0, relation="country capital city", weight=None, bias=None):
    generator = torch.Generator().manual_seed(seed)
    d = lm.hidden_size
    return LinearRelationOperator(
        weight=weight if weight is not None else torch.randn(d, d, generator=generator) / d**0.5,
        bias=bias if bias is not None else torch.randn(d, generator=generator),
        beta=1.5,
        layer=layer,
        relation=relation,
        model=lm.spec,
        n_train=5,
        seed=0,
        test_prompt_template=TEMPLATE,
    )


def hidden_states(lm, text):
    """Every layer's hidden states [layer, pos, d] of one plain forward (no hooks): emb, 0, 1, ..."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0], out.logits[0]


def test_the_lens_at_the_subject_is_the_operators_prediction(llama):
    operators = {layer: operator(llama, layer, seed=i) for i, layer in enumerate(["emb", 0, 2])}
    prompt = encode_prompt(llama.tokenizer, fill_subject(TEMPLATE, "France"))
    view = attribute_lens(operators, prompt.text, llama, k=3)
    for layer, op in operators.items():
        predicted = op.predict("France", llama, k=3)
        tokens = view.attribute.strings[view.layers.index(layer)][prompt.subject_index]
        assert tokens == [token for token, _ in predicted]
        torch.testing.assert_close(
            view.attribute.probabilities[view.layers.index(layer), prompt.subject_index],
            torch.tensor([p for _, p in predicted]),
        )


def test_every_cell_reads_the_hidden_state_of_its_layer_and_position(llama):
    text = "Paris is lovely. The capital city of France is"
    operators = {layer: operator(llama, layer, seed=i) for i, layer in enumerate(["emb", 0, 1])}
    view = attribute_lens(operators, text, llama, k=2)
    states, logits = hidden_states(
        llama, text
    )  # [layer, pos, d]: emb, 0, 1, then the last block's after the final norm
    assert view.layers == ["emb", 0, 1]
    for i, layer in enumerate(view.layers):
        h = states[llama.state_index(layer)]  # [pos, d]
        expected = llama.decode(operators[layer](h)).softmax(-1).topk(2)
        torch.testing.assert_close(view.attribute.token_ids[i], expected.indices)
        torch.testing.assert_close(view.attribute.probabilities[i], expected.values)
        logit = llama.decode(h).softmax(-1).topk(2)
        torch.testing.assert_close(view.logit.token_ids[i], logit.indices)
    # The logit lens at the last block is the model's own next-token distribution.
    last = attribute_lens({2: operator(llama, 2)}, text, llama, k=2)
    torch.testing.assert_close(last.logit.probabilities[0], logits.softmax(-1).topk(2).values)


def test_a_planted_linear_relation_reads_its_objects_at_its_subjects(llama):
    text = "The capital city of France is Paris. The capital city of Japan is"
    layer = 1
    states, _ = hidden_states(llama, text)
    offsets = llama.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    last_token = {  # the token covering each subject's last character
        name: next(i for i, (a, b) in enumerate(offsets) if a <= text.index(name) + len(name) - 1 < b)
        for name in ("France", "Japan")
    }
    s = torch.stack([states[layer + 1, last_token[name]] for name in ("France", "Japan")], dim=1)  # [d, 2]
    targets = torch.randn(llama.hidden_size, 2, generator=torch.Generator().manual_seed(3)) * 4  # [d, 2]
    objects = llama.decode(targets.T).argmax(-1).tolist()
    assert objects[0] != objects[1]
    weight = targets @ torch.linalg.pinv(s)  # W s_France = u_0, W s_Japan = u_1 (b = 0, β = 1)
    planted = operator(llama, layer, weight=weight, bias=torch.zeros(llama.hidden_size))
    planted.beta = 1.0
    view = attribute_lens({layer: planted}, text, llama, k=1)
    for (name, position), expected in zip(last_token.items(), objects):
        assert view.attribute.token_ids[0, position, 0].item() == expected, name
    subject_view = attribute_lens({layer: planted}, text, llama, k=1, positions="subject", subject="Japan")
    assert subject_view.positions[-1] == last_token["Japan"]
    assert all(position > last_token["France"] for position in subject_view.positions)
    assert (
        subject_view.cell("attribute", layer, last_token["Japan"])[0] == llama.token_strings([objects[1]])[0]
    )


def test_the_figure_and_the_table_hold_every_cell(llama):
    text = "The capital city of France is"
    operators = {layer: operator(llama, layer) for layer in [0, 2]}
    view = attribute_lens(operators, text, llama, k=1)
    figure = view.figure()
    lens_axis, logit_axis = figure.axes[:2]
    cells = len(view.layers) * len(view.positions)
    assert len(lens_axis.texts) == cells and len(logit_axis.texts) == cells
    assert [t.get_text() for t in lens_axis.get_xticklabels()] == [short(token, 10) for token in view.tokens]
    assert [t.get_text() for t in lens_axis.get_yticklabels()] == ["0", "2"]
    first = view.attribute.strings[0][0][0]
    assert lens_axis.texts[0].get_text() == short(first.strip() or first)
    assert "country capital city" in lens_axis.get_title() and logit_axis.get_title() == "logit lens"
    lines = view.table().splitlines()
    assert len(lines) == 2 + 2 * len(view.layers)
    assert lines[2].startswith("0 lre") and f"{first!r}" in lines[2]


def test_bad_input_gets_one_line(llama):
    operators = {0: operator(llama, 0)}
    with pytest.raises(InputError, match="empty prompt"):
        attribute_lens(operators, "  ", llama)
    with pytest.raises(InputError, match="longer than .* context of 512"):
        attribute_lens(operators, "France " * 600, llama)
    with pytest.raises(InputError, match="subject 'Spain' is not in the prompt"):
        attribute_lens(
            operators, "The capital city of France is", llama, positions="subject", subject="Spain"
        )
    with pytest.raises(InputError, match="layer 1 has no operator"):
        attribute_lens(operators, "France", llama, layers=[1])
    other = tiny_gpt2()  # d = 32, another model
    with pytest.raises(
        InputError, match=r"48-dimensional, but .* has d=32 .*give operators estimated on this model"
    ):
        attribute_lens(operators, "France", other)
    mixed = {0: operator(llama, 0), 1: operator(llama, 1, relation="country language")}
    with pytest.raises(InputError, match="several relations"):
        attribute_lens(mixed, "France", llama)
    with pytest.raises(InputError, match="positions='some'"):
        attribute_lens(operators, "France", llama, positions="some")
