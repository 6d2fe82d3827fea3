"""--emit torch: readable PyTorch source for a spec (emit.emit_torch). One module per role,
listed in docs/architecture.md (emit/torch/)."""
