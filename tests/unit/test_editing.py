"""Causality edits against a hand-written loop that runs every edit as a full forward of its prompt."""

import pytest
import torch
from reference import edited_output

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.relations import load_relation
from lre_pl.evaluation.causality import (
    COMPARISON_EDITS,
    EditSet,
    all_pairs,
    comparison_edits,
    edit_batch_size,
    edit_hits,
    edited_outputs,
    efficacy,
    no_target_reason,
    pinv_edits,
    random_targets,
    target_pool,
)
from lre_pl.lightning.datamodule import RelationPrompts
from lre_pl.lm.activations import collect_states
from lre_pl.lre.operator import LinearRelationOperator


@pytest.fixture(scope="module")
def edit_set(llama):
    prompts = RelationPrompts.build(load_relation("country capital city"), llama, n_train=5, seed=0)
    chosen = list(range(6))
    encoded = [prompts.test_prompts[i] for i in chosen]
    states = collect_states(llama, encoded)
    subjects = [prompts.test_samples[i].subject for i in chosen]
    objects = [prompts.test_samples[i].object for i in chosen]
    return EditSet(encoded, subjects, objects, states.subject_states, states.output_states)


@pytest.mark.parametrize("layers", [["emb"], [1], [0, 2], [2, "emb"]])
def test_batched_suffix_edits_match_full_forward_edits(llama, edit_set, layers):
    """Several layers in one call (resumed after each, from one unedited pass), the last block included."""
    generator = torch.Generator().manual_seed(0)
    deltas = {
        layer: [torch.randn(6, llama.hidden_size, generator=generator) for _ in range(2)] for layer in layers
    }
    batched = edited_outputs(
        llama,
        edit_set.prompts,
        {layer: [torch.zeros(6, llama.hidden_size), *sets] for layer, sets in deltas.items()},
    )
    assert list(batched) == layers
    for layer, sets in deltas.items():
        torch.testing.assert_close(
            batched[layer][0], edit_set.output_states, atol=1e-5, rtol=1e-4
        )  # no edit: o
        for delta, outputs in zip(sets, batched[layer][1:]):
            for row, prompt in enumerate(edit_set.prompts):
                expected = edited_output(llama, prompt, layer, delta[row])
                torch.testing.assert_close(outputs[row], expected, atol=1e-5, rtol=1e-4)


def test_full_rank_pinv_edit_moves_the_lre_output_to_the_target_exactly(edit_set):
    d = edit_set.output_states.shape[1]
    weight = torch.randn(d, d, generator=torch.Generator().manual_seed(1))  # full rank
    s = edit_set.subject_states[:, 2]  # [n, d] block 1
    bias = edit_set.output_states[0] - weight @ s[0]  # so that LRE(s_0) = o_0
    operator = LinearRelationOperator(weight, bias, 1.0, 1, "r", "m", 5, 0)
    edit = pinv_edits(edit_set, operator.weight, [d])[d]
    sources, targets = torch.tensor([0]), torch.tensor([3])
    edited = operator(s[sources] + edit(sources, targets))
    # LRE(s_0) = o_0 by construction; the full-rank edit of s_0 lands on o_3.
    torch.testing.assert_close(edited[0], edit_set.output_states[3], atol=1e-3, rtol=1e-4)
    assert pinv_edits(edit_set, operator.weight, [0])[0](sources, targets).abs().max() == 0  # rank 0: no edit


def test_targets_follow_the_paper_rule():
    subjects = ["a", "b", "c", "d", "a"]
    objects = ["x", "x", "y", "z", "w"]
    pairs = all_pairs(subjects, objects)
    assert (0, 1) not in pairs and (0, 4) not in pairs and (0, 2) in pairs  # same object / same subject
    assert len(pairs) == 16  # 2 + 3 + 4 + 4 + 3 targets for sources 0..4
    chosen = random_targets(subjects, objects, seed=0)
    assert [source for source, _ in chosen] == [0, 1, 2, 3, 4] and set(chosen) <= set(pairs)
    assert random_targets(subjects, objects, seed=0) == chosen


def test_wider_targets_come_from_every_test_sample_and_sources_stay_known():
    subjects, objects = ["a", "b", "c", "d", "e"], ["men", "men", "women", "men", "women"]
    known = torch.tensor([0, 1, 3])  # every known sample's object is "men": the paper's rule has no target
    pool, sources = target_pool("known", known, 5)
    assert pool.tolist() == [0, 1, 3] and sources.tolist() == [0, 1, 2]
    in_known = [subjects[i] for i in pool.tolist()], [objects[i] for i in pool.tolist()]
    assert random_targets(*in_known, seed=0, sources=sources.tolist()) == []
    assert no_target_reason(in_known[1], "known") == "no_edit_target"
    pool, sources = target_pool("relation", known, 5)
    assert pool.tolist() == [0, 1, 2, 3, 4] and sources.tolist() == [0, 1, 3]
    pairs = random_targets(subjects, objects, seed=0, sources=sources.tolist())
    assert [s for s, _ in pairs] == [0, 1, 3] and all(objects[t] == "women" for _, t in pairs)
    assert no_target_reason(["men", "Men "], "relation") == "no_edit_target_in_relation"
    assert no_target_reason(["men", "women"], "known") == "no_edit_pair"  # objects differ, subjects not
    with pytest.raises(ValueError, match="edit targets 'all'"):
        target_pool("all", known, 5)


def test_efficacy_counts_what_a_hand_written_loop_counts(llama, edit_set):
    layer, d = 1, llama.hidden_size
    weight = torch.randn(d, d, generator=torch.Generator().manual_seed(2))
    pairs = all_pairs(edit_set.subjects, edit_set.objects)
    edit_fns = {**pinv_edits(edit_set, weight, [4, d]), **comparison_edits(llama, edit_set, layer)}
    assert set(edit_fns) == {4, d, *COMPARISON_EDITS}
    # Objects rewritten from the hand loop's own answers, so that some edits succeed.
    hand = {}
    for key, edit in edit_fns.items():
        for source, target in pairs:
            delta = edit(torch.tensor([source]), torch.tensor([target]))[0]
            hand[key, source, target] = llama.token_strings(
                [llama.decode(edited_output(llama, edit_set.prompts[source], layer, delta)).argmax()]
            )[0]
    first_source = {
        target: source for source, target in reversed(pairs)
    }  # the first pair aimed at each target
    objects = [f"{hand[d, first_source[t], t].strip()}-{t}" for t in range(6)]
    edits = EditSet(
        edit_set.prompts, edit_set.subjects, objects, edit_set.subject_states, edit_set.output_states
    )
    result = efficacy(llama, edits, pairs, {layer: edit_fns}, batch_size=7)[layer]
    per_pair = edit_hits(llama, edits, pairs, {layer: edit_fns}, batch_size=5)[layer]
    at_once = edit_hits(llama, edits, pairs, {layer: edit_fns}, batch_size=len(pairs))[layer]  # a GPU's pass
    for key in edit_fns:
        expected = [is_prefix_match(hand[key, s, t], objects[t]) for s, t in pairs]
        assert per_pair[key].tolist() == expected, key
        assert at_once[key].tolist() == expected, key
        assert result[key] == (sum(expected), len(pairs)), key
    assert result[d][0] >= 6  # one constructed success per target at least


def test_edit_batches_fill_a_gpu_and_keep_the_cpu_batch(llama):
    """On a CPU the given batch; on a GPU every pair where half the free memory holds their rows, else as
    many as it holds (a row: its prefix keys and values, activations, logits)."""
    assert edit_batch_size(llama, 8, pairs=300, sets=10, tokens=40) == 8
    fake = type("FakeCuda", (), {})()
    fake.__dict__.update(
        device=torch.device("cuda"), dtype=torch.float32, hidden_size=llama.hidden_size,
        num_blocks=llama.num_blocks, unembedding=llama.unembedding,
        intermediate_size=llama.model.config.intermediate_size,
    )  # fmt: skip
    d, blocks, vocabulary = llama.hidden_size, llama.num_blocks, llama.unembedding.weight.shape[0]
    row = 4 * (2 * blocks * d * 40 + 4 * 40 * (d + llama.model.config.intermediate_size) + 2 * vocabulary)
    fake.free_memory = 10**12
    assert edit_batch_size(fake, 8, pairs=300, sets=10, tokens=40) == 300
    fake.free_memory = 2 * 10 * row * 37 + 1
    assert edit_batch_size(fake, 8, pairs=300, sets=10, tokens=40) == 37
    fake.free_memory = 1
    assert edit_batch_size(fake, 8, pairs=300, sets=10, tokens=40) == 1
