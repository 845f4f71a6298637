"""Question 16 (in_context) on the tiny sweep: each variant's LRE against an independent computation (a
hand-computed b; plain autograd over hand-written prompts) and its rows against a hand decode."""

import pytest
import torch
from reference import full_forward_map, reference_jacobian
from test_sweep import tiny_config

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.prompts import PromptText, encode_prompt
from lre_pl.dataset.relations import load_relation
from lre_pl.evaluation.context import Decoder
from lre_pl.experiments.beta_study.context import StudyContext, StudySettings
from lre_pl.experiments.beta_study.questions.base import VERDICTS, Findings
from lre_pl.experiments.beta_study.questions.in_context import InContext, example_pool, shot_prompts
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lightning.datamodule import prompt_prefix
from lre_pl.lm.models import load_language_model
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.operator import relation_readout

LAYER = 1
SHOTS = (1, 2, 8)
#: A random tiny model never names an object at top 1, so rows of top-1 hits are all 0 whatever the
#: readout; among its top 50 it names some, which makes the hand decode a check.
TOP_K = 50


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    Sweep(tiny_config(tiny_model_dir, folder), command="lre-pl sweep (test)").run()
    return folder


@pytest.fixture(scope="module")
def grid(swept, tiny_model_dir):
    return tiny_config(tiny_model_dir, swept).grid()


@pytest.fixture(scope="module")
def context(swept, tiny_model_dir, grid):
    """8 of the 19 test samples evaluated, so that 8 examples fit among the others."""
    bundle = Bundle.load(swept / "bundles" / "country_capital_city" / "trial_0.pt")
    lm = load_language_model(tiny_model_dir)
    return StudyContext.of(bundle, grid, Decoder(lm, TOP_K), LAYER, StudySettings(max_known=8, shots=SHOTS))


@pytest.fixture(scope="module")
def variants(context):
    return dict(InContext().variants(context, load_relation(context.bundle.relation)))


@pytest.fixture(scope="module")
def rows(context):
    return InContext().rows(context)


def evaluated_subjects(context) -> set[str]:
    return {context.bundle.test_subjects[i] for i in context.known.tolist()}


def test_every_variant_is_computed(variants, rows):
    names = ["few_shot", "b_from_dev", "zero_shot", "shots_1", "shots_2", "shots_8"]
    assert list(variants) == names
    assert list(dict.fromkeys(row["estimator"] for row in rows)) == names
    assert {row["kind"] for row in rows} == {"in_context"}
    assert {row["estimator"] for row in rows if row["metric"] == "seconds"} == set(names[2:])


def test_b_from_dev_is_the_dev_samples_mean_of_o_minus_w_s(context, variants):
    b, i = context.bundle, context.bundle.layer_index(LAYER)
    dev = context.known[context.splits["dev"]]
    expected = torch.stack(
        [b.test_output_states[k] - b.weights[i] @ b.test_states(LAYER)[k] for k in dev.tolist()]
    )
    torch.testing.assert_close(variants["b_from_dev"].bias, expected.mean(0))
    torch.testing.assert_close(variants["few_shot"].bias, b.biases[i])
    torch.testing.assert_close(
        variants["b_from_dev"].projection, b.test_states(LAYER)[context.known] @ b.weights[i].T
    )


def hand_prompt(template: str, examples, subject: str, prefix: str) -> PromptText:
    head, tail = template.split("{}")
    text = prefix + "".join(f"{head}{e.subject}{tail} {e.object}\n" for e in examples) + head
    return PromptText(text + subject + tail, len(text), len(text) + len(subject))


@pytest.mark.parametrize(("variant", "n"), [("shots_2", 2), ("zero_shot", 0)])
def test_a_prompted_variant_equals_autograd_over_hand_written_prompts(context, variants, variant, n):
    """W = mean J_i and b = mean (o_i − J_i s_i) of training prompts with n examples (the first n training
    samples other than itself: n < n_train), s and o of the evaluated samples on a prompt with the first n."""
    lm, b = context.decoder.lm, context.bundle
    relation = load_relation(b.relation)
    template = relation.prompt_templates_zs[0] if variant == "zero_shot" else relation.prompt_templates[0]
    train, prefix = [item.sample for item in context.train_prompts], prompt_prefix(lm)
    jacobians, biases = [], []
    for sample in train:
        examples = [other for other in train if other != sample][:n]
        prompt = encode_prompt(lm.tokenizer, hand_prompt(template, examples, sample.subject, prefix))
        jacobian, output = reference_jacobian(lm, prompt, LAYER)
        jacobians.append(jacobian)
        biases.append(output - jacobian @ full_forward_map(lm, prompt, LAYER)[1])
    weight = torch.stack(jacobians).mean(0)
    states, hits = [], []
    for k in context.known.tolist():
        prompt = encode_prompt(lm.tokenizer, hand_prompt(template, train[:n], b.test_subjects[k], prefix))
        function, state = full_forward_map(lm, prompt, LAYER)
        with torch.no_grad():
            answer = lm.token_strings([lm.decode(function(state)[None]).argmax().item()])[0]
        states.append(state)
        hits.append(is_prefix_match(answer, b.test_objects[k]))
    computed = variants[variant]
    torch.testing.assert_close(computed.projection, torch.stack(states) @ weight.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(computed.bias, torch.stack(biases).mean(0), rtol=1e-4, atol=1e-4)
    assert computed.lm_hits.tolist() == hits
    assert computed.in_context == tuple(sample.object for sample in train[:n])


def hand_decode(context, hidden: torch.Tensor) -> list[list[str]]:
    """The top-k token strings of each readout [k, d], by the model's own decode."""
    lm = context.decoder.lm
    with torch.no_grad():
        ids = lm.decode(hidden).topk(TOP_K).indices
    return [lm.token_strings(row) for row in ids]


def test_rows_equal_a_hand_decode_of_each_variant(context, variants, rows):
    by_key = {(r["estimator"], r["selection"], r["beta"], r["split"], r["metric"]): r for r in rows}
    in_context_objects = {v: variant.in_context for v, variant in variants.items()}
    some_hit = False
    for name, variant in variants.items():
        for beta in context.rule.scan_betas:
            tokens = hand_decode(context, relation_readout(variant.projection, variant.bias, beta))
            top_1 = [[is_prefix_match(row[0], obj)] for row, obj in zip(tokens, context.objects)]
            top_k = [any(is_prefix_match(t, obj) for t in row) for row, obj in zip(tokens, context.objects)]
            for split, positions in context.splits.items():
                for metric, hits in (
                    ("faithfulness@1", [h[0] for h in top_1]),
                    (f"faithfulness@{TOP_K}", top_k),
                ):
                    expected = sum(hits[p] for p in positions.tolist()) / len(positions)
                    assert by_key[name, None, beta, split, metric]["value"] == pytest.approx(expected), (
                        name,
                        beta,
                    )
                    some_hit |= expected > 0
            if beta == 1.0 and in_context_objects[name]:  # where the β = 1 misses land
                for split, positions in context.splits.items():
                    missed = [p for p in positions.tolist() if not top_1[p][0]]
                    on = [
                        p
                        for p in missed
                        if any(is_prefix_match(tokens[p][0], o) for o in in_context_objects[name])
                    ]
                    row = by_key[name, "beta_1", 1.0, split, "miss_on_in_context"]
                    assert row["n"] == len(missed) and row["value"] == pytest.approx(len(on) / len(missed))
        dev_scores = {
            beta: by_key[name, None, beta, "dev", "faithfulness@1"]["value"]
            for beta in context.rule.scan_betas
        }
        chosen = [r["value"] for r in rows if r["estimator"] == name and r["metric"] == "chosen_beta"]
        assert chosen == [context.rule.beta(dev_scores)]
        at_chosen = {
            r["beta"]
            for r in rows
            if r["estimator"] == name and r["selection"] == "dev" and r["metric"] != "chosen_beta"
        }
        assert at_chosen == (set(chosen) if in_context_objects[name] else set())
        for split, positions in context.splits.items():
            expected = variant.lm_hits[positions].float().mean().item()
            assert by_key[name, None, None, split, "lm_accuracy"]["value"] == pytest.approx(expected)
    assert some_hit  # the comparison is not of zeros only


def test_the_prompts_of_n_train_examples_end_like_the_bundle_s_and_none_holds_an_evaluated_sample(context):
    lm, b = context.decoder.lm, context.bundle
    relation, train = load_relation(b.relation), [item.sample for item in context.train_prompts]
    evaluated = [s for s in relation.samples if s.subject in evaluated_subjects(context)]
    pool = example_pool(relation.samples, train, evaluated, b.seed)
    prefix = prompt_prefix(lm)
    assert (
        shot_prompts(relation.prompt_templates[0], pool, train, b.n_train, prefix).test_template
        == b.test_prompt_template
    )
    eight = shot_prompts(relation.prompt_templates[0], pool, train, 8, prefix)
    texts = [p.text for p in eight.train] + [eight.test_template]
    assert all(f"{s} " not in text for s in evaluated_subjects(context) for text in texts)
    assert [e for e in eight.examples if e not in train] == pool[5:8]


def test_the_question_summarizes_renders_judges_and_draws(context, rows):
    question = InContext()
    numbers = question.summarize(rows, context.rule)
    assert list(numbers["variants"]) == [
        "few_shot",
        "b_from_dev",
        "zero_shot",
        "shots_1",
        "shots_2",
        "shots_8",
    ]
    assert "zero_shot" not in numbers["misses"] and numbers["misses"]["shots_8"]["beta_1"]["misses"] > 0
    assert question.judge(numbers).word in VERDICTS
    text = question.render(numbers, Findings("tiny", context.rule))
    assert "| shots_8 | 1 |" in text and "in_context_tiny.png" in text
    assert list(question.figures(rows, "tiny")) == ["in_context_tiny.png"]
