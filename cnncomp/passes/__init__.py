"""Optimization passes over the LayerGraph (see manager.py for the infrastructure)."""

from cnncomp.passes.manager import (  # noqa: F401
    PassContext, PassRunner, PassStep, all_passes, format_stats, level_pipeline, parse_pass_list, run_pipeline,
)
