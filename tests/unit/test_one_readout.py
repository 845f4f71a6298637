"""The LRE's readout β W s + b is formed in one place, :func:`lre_pl.lre.operator.relation_readout` (or
the operator that calls it): no other module of the package writes it by hand (issue 14)."""

import io
import re
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "lre_pl"
#: The one module that forms the readout.
HOME = PACKAGE / "lre" / "operator.py"

#: Code that scales W s or β, or adds b to W s, by hand: ``beta *``, ``* beta``, ``β *``,
#: ``* projection``, ``projection *``, ``projection + bias`` (any prefix or plural of the names).
HAND_WRITTEN = re.compile(
    r"\b(\w*beta|β)s?\s*\*(?!\*)|(?<!\*)\*\s*(\w*beta|β)s?\b|(?<!\*)\*\s*\w*projections?\b"
    r"|\b\w*projections?\s*\*(?!\*)|\b\w*projections?\s*\+\s*\w*bias"
)
#: Tokens that are not code: comments and string literals (docstrings, f-string text).
NOT_CODE = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def hand_written_readouts(source: str) -> list[tuple[int, str]]:
    """(first line, code) of every logical line of ``source`` whose code, comments and strings left
    out, forms a readout by hand."""
    found, code, start = [], [], None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            text = " ".join(code)
            if HAND_WRITTEN.search(text):
                found.append((start, text))
            code, start = [], None
        elif token.type not in NOT_CODE and token.string.strip():
            start = start or token.start[0]
            code.append(token.string)
    return found


def test_no_module_but_the_operator_forms_the_readout_by_hand():
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != HOME and (lines := hand_written_readouts(path.read_text()))
    }
    assert found == {}


def test_the_operator_is_where_the_scan_finds_it():
    """The scan sees the readout's own home (so it is not blind to the forms it looks for)."""
    assert [code for _, code in hand_written_readouts(HOME.read_text())] == [
        "return beta * projection + bias",
        "return projection + bias / beta if beta else torch . full_like ( projection , float ( ) )",
        "return beta * ( projection + bias )",
    ]


@pytest.mark.parametrize(
    "planted",
    [
        "hidden = beta * projection + bias\n",
        "hidden = projection + bias / beta\n",
        "hidden = (\n    beta\n    * (projection + bias)\n)\n",
        "logits = decode(log_beta.exp()[groups][:, None] * projections + biases)\n",
        "z = β * w_s + b\n",
        "z = unit_projection * 2.0 + b\n",
        "z = w @ s * betas[i] + b\n",
        "def f(x):\n    return x @ weight.T + bias if x else test_projection + mean_bias\n",
    ],
)
def test_the_scan_finds_a_planted_readout(planted):
    assert len(hand_written_readouts(planted)) == 1, planted


def test_the_scan_ignores_words_and_the_one_readout():
    source = (
        '"""The readout beta * W s + b, as a docstring says it."""\n'
        "x = relation_readout(projection, bias, beta)  # beta * projection + bias\n"
        'label = f"beta * {name}"\n'
        "steps = 2 ** beta_steps\n"
        "beta = 2.0\n"
    )
    assert hand_written_readouts(source) == []
