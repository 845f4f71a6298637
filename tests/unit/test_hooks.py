import pytest
import torch

from lre_pl.lm.hooks import bypassed, capture, patched


def test_capture_reads_every_layer_and_removes_its_hooks(llama):
    ids = torch.tensor([[1, 2, 3, 4]])
    modules = {layer: llama.layer_module(layer) for layer in llama.layer_names()}
    with torch.no_grad():
        expected = llama.model(input_ids=ids, output_hidden_states=True).hidden_states  # emb, block 0, ...
    before = {layer: dict(module._forward_hooks) for layer, module in modules.items()}  # transformers' own
    with torch.no_grad(), capture(modules, lambda _, hidden: hidden[0, -1]) as captured:
        llama.base_model(input_ids=ids)
    assert list(captured) == llama.layer_names()  # filled in forward order
    for i, layer in enumerate(llama.layer_names()[:-1]):  # the last hidden state is after the final norm
        torch.testing.assert_close(captured[layer], expected[i][0, -1])
    assert {layer: dict(module._forward_hooks) for layer, module in modules.items()} == before


def test_patched_rewrites_and_a_nested_capture_sees_the_rewrite(llama):
    ids = torch.tensor([[5, 6, 7]])
    block = {0: llama.blocks[0]}
    with torch.no_grad():
        with capture(block) as plain:
            llama.base_model(input_ids=ids)
        with patched(block, lambda _, hidden: 2 * hidden), capture(block) as doubled:
            llama.base_model(input_ids=ids)
    torch.testing.assert_close(doubled[0], 2 * plain[0])


def test_hooks_are_removed_when_the_block_raises(llama):
    before = dict(llama.blocks[0]._forward_hooks)
    with pytest.raises(RuntimeError, match="boom"), patched({0: llama.blocks[0]}, lambda _, hidden: hidden):
        raise RuntimeError("boom")
    assert dict(llama.blocks[0]._forward_hooks) == before


def test_bypassed_modules_do_not_run_and_come_back(llama):
    ids = torch.tensor([[5, 6, 7]])
    blocks = list(llama.blocks)
    calls = []
    with torch.no_grad():
        with capture({"o": blocks[-1]}) as plain:
            llama.base_model(input_ids=ids)
        replacement = torch.randn_like(plain["o"])
        with (
            patched({0: blocks[0]}, lambda _, hidden: calls.append(hidden) or hidden),  # hooks still run
            bypassed(blocks, replacement),
            capture({"o": blocks[-1]}) as skipped,
        ):
            llama.base_model(input_ids=ids)
        assert calls and calls[0] is replacement
        torch.testing.assert_close(skipped["o"], replacement)
        with pytest.raises(RuntimeError, match="boom"), bypassed(blocks, replacement):
            raise RuntimeError("boom")
        assert not any("forward" in vars(block) for block in blocks)
        with capture({"o": blocks[-1]}) as again:
            llama.base_model(input_ids=ids)
    torch.testing.assert_close(again["o"], plain["o"])
