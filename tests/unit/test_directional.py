"""Forward-mode products at replaced subject states against plain autograd of an uncached full forward."""

import pytest
import torch
from reference import full_forward_map, relative_error

from lre_pl.dataset.prompts import encode_prompt, make_prompt
from lre_pl.dataset.relations import load_relation
from lre_pl.lm.directional import directional_products

LAYER = {
    "llama": 1,
    "gpt2": 0,
}  # a block before the last (the last one's J is zero unless the subject is last)


def prompts_of(lm):
    """Three prompts with 1, 2 and 3 examples: different prefix and suffix lengths, so padding on both sides."""
    relation = load_relation("country capital city")
    template, samples = relation.prompt_templates[0], relation.samples
    return [
        encode_prompt(lm.tokenizer, make_prompt(template, s.subject, samples[i + 1 : i + 2 + i]))
        for i, s in enumerate(samples[:3])
    ]


@pytest.mark.parametrize("model", ["llama", "gpt2"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_products_and_outputs_match_full_forward_autograd(model, chunk_size, request):
    lm = request.getfixturevalue(model)
    layer, prompts = LAYER[model], prompts_of(lm)
    generator = torch.Generator().manual_seed(0)
    d = lm.hidden_size
    points = torch.randn(3, 2, d, generator=generator) * 3  # [n, P, d]
    tangents = torch.randn(3, 2, 4, d, generator=generator)  # [n, P, T, d]
    result = directional_products(lm, prompts, layer, points, tangents, chunk_size=chunk_size)
    assert result.outputs.shape == (3, 2, d) and result.products.shape == (3, 2, 4, d)
    for i, prompt in enumerate(prompts):
        function, _ = full_forward_map(lm, prompt, layer)
        for k in range(2):
            jacobian = torch.autograd.functional.jacobian(function, points[i, k], vectorize=True)  # [d, d]
            expected = tangents[i, k] @ jacobian.T  # [T, d] J v of each tangent
            assert expected.norm() > 0
            assert relative_error(result.products[i, k], expected) < 1e-5, (i, k)
            with torch.no_grad():
                assert relative_error(result.outputs[i, k], function(points[i, k])) < 1e-5, (i, k)


def test_the_subject_state_itself_gives_the_prompt_s_own_output(llama):
    """Writing each prompt's own subject state back changes nothing: o is the prompt's plain output."""
    prompts = prompts_of(llama)
    states, outputs = zip(*[full_forward_map(llama, p, 1)[::-1] for p in prompts])
    with torch.no_grad():
        plain = torch.stack([f(s) for f, s in zip(outputs, states)])
    result = directional_products(llama, prompts, 1, torch.stack(states)[:, None], torch.zeros(3, 1, 1, 48))
    torch.testing.assert_close(result.outputs[:, 0], plain, atol=1e-5, rtol=1e-4)
    assert result.products.abs().max() == 0
