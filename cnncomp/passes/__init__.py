"""Optimization passes over the LayerGraph (see _manager.py for the infrastructure)."""

from cnncomp.passes._manager import (  # noqa: F401
    PassContext, PassStep, all_passes, format_stats, level_pipeline, parse_pass_list, run_pipeline,
)
