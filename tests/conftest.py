"""Shared fixtures: a tiny random Google-format BERT dir (real MiniLM vocab), the CoNLL files and
small samples of them.

TensorFlow is imported inside the fixtures only, so tests that must not load it (clients) can
still check `sys.modules`.
"""

import os
from pathlib import Path

import pytest

from bert_ner.paths import REPO_ROOT
from conll_sample import write_first_sentences
from support.bert import write_random_bert

TINY_BERT_CONFIG = {
  "vocab_size": 30522,
  "hidden_size": 32,
  "num_hidden_layers": 2,
  "num_attention_heads": 2,
  "intermediate_size": 64,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 64,
  "type_vocab_size": 2,
  "initializer_range": 0.02,
  "layer_norm_eps": 1e-12,
}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
  """Google-format BERT dir: tiny config, random weights, the real MiniLM (uncased) vocab.txt.

  Holds `bert_config.json`, `vocab.txt` and `bert_model.ckpt.{index,data-00000-of-00001}`.
  Shared by the whole session: copy it before adding files.
  """
  from bert_ner import backbone, modeling

  out_dir = tmp_path_factory.mktemp("tiny_bert")
  config = modeling.BertConfig.from_dict(TINY_BERT_CONFIG)
  return write_random_bert(out_dir, config, backbone.locate_default_backbone() / "vocab.txt")


# Where the CoNLL-2003 files are looked for; CONLL2003_DIR moves it (for tests only).
CONLL_DIR = Path(os.environ.get("CONLL2003_DIR", REPO_ROOT / "../shared/data/conll2003"))


def _conll_path(name):
  """Path of a CoNLL-2003 file in CONLL_DIR (../shared/data/conll2003 beside the repo).

  Absent: a failure when CI=true (a CI run without the data would pass while testing less: the
  tests that need it guard tagging, alignment and scoring on real sentences), a skip that says
  how to get the data otherwise.
  """
  path = (CONLL_DIR / name).resolve()
  if not path.is_file():
    message = (
      f"CoNLL-2003 {name} not found at {path}: save the CoNLL-2003 English train and "
      f"dev splits (eng.train, eng.testa) as train.txt and dev.txt in "
      f"{CONLL_DIR.resolve()}, or point CONLL2003_DIR at their directory"
    )
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def conll_dev_path():
  """The CoNLL-2003 dev split (eng.testa)."""
  return _conll_path("dev.txt")


@pytest.fixture(scope="session")
def conll_train_path():
  """The CoNLL-2003 train split (eng.train)."""
  return _conll_path("train.txt")


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory, conll_train_path, conll_dev_path):
  """Small train/dev CoNLL files (40 and 20 sentences) for quick training runs."""
  root = tmp_path_factory.mktemp("conll_sample")
  return (
    str(write_first_sentences(conll_train_path, root / "train.txt", 40)),
    str(write_first_sentences(conll_dev_path, root / "dev.txt", 20)),
  )


# The longest test modules (minutes each on 2 cores), longest first. `make test` hands whole
# modules to its workers in collection order: started first, they cannot leave one worker busy at
# the end while the other idles. Order inside a module is kept.
LONGEST_MODULES = (
  "tests/test_tf218_runtime.py",
  "tests/test_tfs_batching.py",
  "tests/test_default_model.py",
  "tests/test_reload.py",
  "tests/test_export.py",
  "tests/reliability/test_rel_memory.py",
  "tests/reliability/test_rel_connections.py",
  "tests/test_text_graph.py",
  "tests/test_clients.py",
  "tests/reliability/test_rel_faults.py",
  "tests/test_text_serving.py",
)


def pytest_collection_modifyitems(items):
  rank = {path: i for i, path in enumerate(LONGEST_MODULES)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
