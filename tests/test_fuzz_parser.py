"""Property test: mutated specs either elaborate or fail with a located CnnError, nothing else."""

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncomp.frontend.cnn.loader import STDLIB_PATH, load_text
from cnncomp.errors import CnnError

PAGE = Path(__file__).parent / "data" / "cnn-language.md"
SEEDS = [b for b in re.findall(r"```\n(.*?)```", PAGE.read_text(), re.S) if "network" in b and "error:" not in b]
SEEDS.append("network std\ninput x: [N, 16, 16, 16]\n" + STDLIB_PATH.read_text()
             + "y = x -> bottleneck(4, 16) -> se(4) -> inverted_residual(16, 2) -> shuffle_unit(16, 4)"
             " -> dense_layer(4) -> fire(4, 8, 8) -> deformable(8, 3) -> repeat 2 as i { basic_block(8 * (i + 1)) }\n"
             "output y\n")
TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_.]*|\d+(?:\.\d+)?|->|//|==|!=|<=|>=|\S")
VOCAB = ["->", "(", ")", "[", "]", "{", "}", ",", "=", "+", "*", "-", "/", "//", "as", "repeat", "if", "then",
         "else", "block", "return", "in", "network", "input", "output", "let", "import", "\n", " ", "0", "-1",
         "99999999999", "1.5", '"s"', "x", "conv", "relu", "k=3", "same", "true", "#", "\x00", "é", "\t"]


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


@st.composite
def mutated(draw):
    toks = tokens(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap", "bytes", "duplicate"]))
        i = draw(st.integers(0, len(toks) - 1))
        if kind == "delete":
            del toks[i]
        elif kind == "insert":
            toks.insert(i, draw(st.sampled_from(VOCAB)))
        elif kind == "swap":
            j = draw(st.integers(0, len(toks) - 1))
            toks[i], toks[j] = toks[j], toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        else:
            toks.insert(i, draw(st.text(min_size=1, max_size=4)))
    return "".join(toks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_fail_only_with_located_errors(text):
    try:
        load_text(text, "fuzz.cnn")
    except CnnError as err:
        assert err.loc is not None or err.message.startswith(("the spec", "-D")), err.message
        assert err.loc is None or err.loc.line >= 1
        str(err)  # rendering never fails
