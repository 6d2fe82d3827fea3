"""Optimization passes over the LayerGraph (see manager.py for the infrastructure)."""

from cnncomp.passes.manager import (  # noqa: F401
    PassContext, PassOrderError, PassRunner, PassStep, all_passes, format_stats, level_pipeline, parse_pass_list,
    pass_order, run_pipeline,
)

all_passes()  # registers every pass and derives their order: a cycle or a pass that could never run fails here
