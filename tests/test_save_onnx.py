"""save_onnx writes the model piece by piece; the file must parse to exactly the model."""

import onnx

import cnncomp
from cnncomp.emit.onnx import save_onnx


def test_streamed_file_parses_to_the_same_model(tmp_path):
    for spec, opset in (("specs/resnet18.cnn", 17), ("specs/deformable_net.cnn", 19), ("specs/textcnn.cnn", 17)):
        model = cnncomp.compile(spec, opset=opset)
        path = tmp_path / "m.onnx"
        save_onnx(model, path)
        loaded = onnx.load(str(path))
        assert loaded.SerializeToString() == model.SerializeToString()
        assert {p.key for p in loaded.metadata_props} >= {"spec_hash"} or loaded.metadata_props
        onnx.checker.check_model(str(path), full_check=True)
