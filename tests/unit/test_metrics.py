"""Faithfulness's one definition: prefix hits per rank, the fit's recall@k and the sweep's decoder."""

import pytest
import torch

from lre_pl.evaluation.context import Decoder
from lre_pl.evaluation.metrics import PrefixRecallAtK, prefix_hits


def test_prefix_hits_marks_each_ranked_token_that_starts_the_object():
    ranked = [[" par", "x", " Paris"], ["Lon", " ", "B"], ["  ", "Rom", "ROME"]]
    hits = prefix_hits(ranked, ["Paris", "Berlin", "Rome"])
    assert hits.dtype == torch.bool
    assert hits.tolist() == [[True, False, True], [False, False, True], [False, True, True]]
    assert prefix_hits([], []).shape == (0, 0)
    with pytest.raises(ValueError, match="2 rows of ranked tokens for 1 objects"):
        prefix_hits([["a"], ["b"]], ["a"])


def test_recall_at_k_counts_a_hit_within_the_first_k_ranks():
    recall = PrefixRecallAtK((1, 2, 3))
    recall.update(torch.tensor([[True, False, False], [False, False, True]]))
    recall.update(torch.tensor([[False, True, False], [False, False, False]]))
    assert {k: value.item() for k, value in recall.compute().items()} == {1: 0.25, 2: 0.5, 3: 0.75}
    recall.reset()
    with pytest.raises(RuntimeError, match="recall over zero samples"):
        recall.compute()


def test_the_decoder_ranks_by_logit_and_counts_hits_with_prefix_hits(llama):
    """Top-k ids, their probabilities and hits of the decoder against a hand decode of the same vectors."""
    k = 40
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, llama.hidden_size, generator=generator)  # [6, d]
    probabilities = llama.decode(hidden).softmax(-1)  # [6, vocab]
    expected = probabilities.topk(k)
    # Objects that the 3rd-ranked token of each row starts (and perhaps another, shorter token).
    third = llama.token_strings(expected.indices[:, 2])
    objects = [token.strip() + "zzz" for token in third]
    decoder = Decoder(llama, k, chunk=4)  # two chunks
    top = decoder.top_tokens(hidden, probabilities=True)
    assert torch.equal(top.ids, expected.indices)
    torch.testing.assert_close(top.probabilities, expected.values)
    assert decoder.top_tokens(hidden).probabilities is None
    matches = decoder.prefix_hits(top.ids, objects)  # [6, k]
    by_hand = [
        [
            token.strip().lower() != "" and obj.lower().startswith(token.strip().lower())
            for token in llama.token_strings(row)
        ]
        for row, obj in zip(expected.indices, objects)
    ]
    assert matches.tolist() == by_hand and matches[:, 2].all() and not matches.all()
    assert torch.equal(decoder.hits(hidden, objects), torch.stack([matches[:, 0], matches.any(1)], dim=1))
    assert decoder.prefix_hits(top.ids[:0], []).shape == (0, k)
