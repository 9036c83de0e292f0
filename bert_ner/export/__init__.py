"""Checkpoint dir -> TF Serving model base (`bert_ner.export.layout` is TF-free, for deploy and
servers)."""
