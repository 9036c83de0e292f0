"""Checkpoint dir -> TF Serving model base (`export.layout` is TF-free, for deploy and servers)."""
