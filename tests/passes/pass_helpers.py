"""Helpers for pass tests: run a pipeline on a spec, check it numerically both ways."""

import numpy as np
import torch

from cnncomp.emit.onnx import check_onnx, emit_onnx
from cnncomp.run.reference import run_reference
from cnncomp.run.session import Session
from cnncomp.verification.harness import make_inputs
from cnncomp.ir.weights import init_weights
from cnncomp.frontend.cnn.loader import load_spec, load_text
from cnncomp.passes import PassContext, parse_pass_list, run_pipeline


class Optimized:
    def __init__(self, ref_graph, ref_weights, ctx, records):
        self.ref_graph, self.ref_weights = ref_graph, ref_weights
        self.graph, self.weights, self.log = ctx.graph, ctx.weights, ctx.log
        self.records = records

    def rewrites(self, pass_name: str) -> int:
        return sum(r.rewrites for r in self.records if r.step.split("(")[0] == pass_name)

    def ops(self) -> list[str]:
        return [layer.op for layer in self.graph.layers() if layer.op != "input"]

    def max_error(self, seed: int = 0, onnx_runtime: bool = True) -> float:
        """Largest |optimized - reference| relative to the reference's scale, over every output.

        The reference is the unoptimized graph in float64; the optimized graph runs under
        ONNX Runtime (float32) or, with onnx_runtime=False, in the float64 reference."""
        feeds = make_inputs(self.ref_graph, seed)
        expected = run_reference(self.ref_graph, self.ref_weights, feeds, dtype=torch.float64)
        if onnx_runtime:
            model = emit_onnx(self.graph, self.weights)
            check_onnx(model)
            got = Session(model).run(feeds)
        else:
            got = run_reference(self.graph, self.weights, feeds, dtype=torch.float64)
        worst = 0.0
        for name, ref in expected.items():
            scale = max(float(np.abs(ref).max()), 1e-12)
            worst = max(worst, float(np.abs(got[name] - ref).max()) / scale)
        return worst


def optimize(spec_or_text, passes: str, seed: int = 0) -> Optimized:
    graph = load_spec(spec_or_text) if str(spec_or_text).endswith(".cnn") else load_text(spec_or_text, "t.cnn")
    weights = init_weights(graph, seed)
    ctx = PassContext(graph.copy(), dict(weights))
    records = run_pipeline(ctx, parse_pass_list(passes), lint=True)
    return Optimized(graph, weights, ctx, records)
