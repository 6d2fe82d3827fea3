"""Receptive fields and effective strides of the summary, through windows, globals and merges."""

from cnncomp.analysis.summary import receptive_fields
from cnncomp.frontend.cnn.loader import load_spec, load_text

SE = """network se
input x: [N, 8, 32, 32]
a = x -> conv(8, k=3, s=2, p=1)
w = a -> gap -> conv(8, k=1) -> sigmoid
y = a * w
z = y -> conv(8, k=3, p=1)
output z
"""


def test_a_broadcast_merge_keeps_the_stride_of_the_full_size_input():
    fields = receptive_fields(load_text(SE, "se.cnn"))
    assert fields["a.0"].jump == (2, 2) and fields["a.0"].size == (3, 3)
    assert fields["w.0"].jump == (32, 32)  # the global pool covers the 16 positions of a, 2 pixels apart
    # every output of the product reads its own position of a and the whole of w: w's field, a's stride
    assert fields["y"].size == fields["w.0"].size and fields["y"].jump == (2, 2)
    assert fields["z.0"].jump == (2, 2) and fields["z.0"].size == (fields["y"].size[0] + 4,) * 2


def test_se_resnet50_fields_stay_finite_and_strides_stay_the_backbones():
    graph = load_spec("specs/se_resnet50.cnn")
    fields = receptive_fields(graph)
    assert fields["layer4.1.se.avgpool"].size[0] < 10_000
    assert fields["layer4.1.relu3"].jump == (32, 32)  # resnet's output stride
    assert fields["layer1.0.se"].jump == (4, 4)
