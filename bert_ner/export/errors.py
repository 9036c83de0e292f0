"""The two ways an export fails, which `python -m bert_ner.export` reports with different exit
statuses."""


class ExportError(Exception):
  """Bad input (missing dir, no checkpoint, unwritable base, a train report without a dev F1):
  nothing exported is touched."""


class ExportRefused(Exception):
  """A model the export will not publish: the reloaded SavedModel disagrees with the checkpoint
  graph, or it would be served scoring far below the served version. The message is one line."""
