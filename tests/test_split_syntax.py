"""`a, b = t -> split(sizes)`: every part of a split bound to its own name, with located errors."""

import pytest

from cnncomp.errors import CnnError
from cnncomp.frontend.cnn.loader import load_text

H = "network n\ninput x: [N, 8, 6, 5]\n"


def test_each_part_is_a_layer_named_after_its_name():
    graph = load_text(H + "y = x -> relu\na, b, c = y -> split((2, 2, 4))\nz = concat(c, a, b)\noutput z\n", "s.cnn")
    parts = {l.name: (l.attrs["part"], l.shape) for l in graph.layers() if l.op == "split"}
    assert parts == {"a.0": (0, ("N", 2, 6, 5)), "b.0": (1, ("N", 2, 6, 5)), "c.0": (2, ("N", 4, 6, 5))}
    assert all(graph.input_names(name) == ["y.0"] for name in parts)


def test_inside_a_block_the_parts_are_named_under_the_call():
    text = (H + "block halves() {\n    lo, hi = in -> split((channels(in) // 2, channels(in) // 2))\n"
            "    return concat(hi, lo -> conv(4, k=1))\n}\ny = x -> halves as h\noutput y\n")
    names = {l.name for l in load_text(text, "s.cnn").layers() if l.op == "split"}
    assert names == {"h.lo.0", "h.hi.0"}


@pytest.mark.parametrize("statement, where, message", [
    ("a, b = x -> relu -> split((4, 4))", (3, 1), "bound only by a split of a named tensor"),
    ("a, b = concat(x, x) -> split((8, 8))", (3, 1), "bound only by a split of a named tensor"),
    ("a, b = x -> split((4, 4), part=1)", (3, 13), "part= chooses one part"),
    ("a, b = x -> split((4, 4)) as s", (3, 30), "takes no `as`"),
    ("a, b, c = x -> split((4, 4))", (3, 16), "3 names for 2 parts"),
    ("a, a = x -> split((4, 4))", (3, 4), "name 'a' is bound twice in one statement"),
    ("a = x -> split((4, 4))", (3, 10), "bind each to its own name"),
    ("a, b = x -> split((4, 3))", (3, 13), "add up to 7, but axis 1 has 8 positions"),
    ("a, b = x -> split((4, 4), axis=0)", (3, 13), "axis 0 is the batch"),
    ("a = x -> split((4, 4), part=2)", (3, 10), "part 2 is out of range for 2 parts"),
    ("x, b = x -> split((4, 4))", (3, 1), "name 'x' is bound twice"),
])
def test_errors_are_located(statement, where, message):
    with pytest.raises(CnnError) as err:
        load_text(H + statement + "\noutput a\n", "s.cnn")
    assert message in err.value.message
    assert (err.value.loc.line, err.value.loc.col) == where
