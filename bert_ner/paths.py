"""The checkout's root directory, spelled once: the clients look for models/ there, the server and
the bench find their files by it, the tests their fixtures."""

from pathlib import Path

# bert_ner/ is a top-level folder of the checkout.
REPO_ROOT = Path(__file__).resolve().parents[1]
