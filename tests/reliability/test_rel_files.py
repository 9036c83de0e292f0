"""Bad files: hostile checkpoint dirs given to the exporter, each refused up front in one line."""

import json
import shutil
import time

import psutil
import pytest

from e2e_support import make_checkpoint
from rel_support import excerpt

REFUSAL_LIMIT_S = 10.0  # a refusal reads configs and variable shapes only; no graph is built
RSS_LIMIT_MB = 200  # what the whole refusal may add to this process's RSS


def _json(name, value):
  return lambda d: (d / name).write_text(json.dumps(value))


def _edit(name, **fields):
  """Sets fields of a JSON file of the dir."""

  def apply(d):
    data = json.loads((d / name).read_text())
    data.update(fields)
    (d / name).write_text(json.dumps(data))

  return apply


def _write(name, data):
  return lambda d: (d / name).write_bytes(data)


def _vocab_without(token):
  def apply(d):
    lines = (d / "vocab.txt").read_text().splitlines()
    (d / "vocab.txt").write_text("\n".join(t for t in lines if t != token) + "\n")

  return apply


DEEP = b"[" * 100_000 + b"]" * 100_000
B, N = "bert_config.json", "ner_config.json"
# (case, edit of a copy of a good tiny checkpoint dir, what the one error line must say)
CASES = [
  ("bert_config not JSON", _write(B, b"{vocab_size: 30522"), "not JSON"),
  ("bert_config not UTF-8", _write(B, b'{"vocab_size": "\xff\xfe"}'), "not UTF-8"),
  ("bert_config nested 100k deep", _write(B, DEEP), "nested too deep"),
  ("bert_config a JSON list", _json(B, [1, 2]), "expected a JSON object"),
  ("num_hidden_layers 100000", _edit(B, num_hidden_layers=100_000), "2 encoder layers"),
  ("num_hidden_layers 1 (checkpoint has 2)", _edit(B, num_hidden_layers=1), "2 encoder layers"),
  ("num_attention_heads 0", _edit(B, num_attention_heads=0), "num_attention_heads must be"),
  ("num_attention_heads 5 (hidden 32)", _edit(B, num_attention_heads=5), "not a multiple"),
  ('hidden_size "32"', _edit(B, hidden_size="32"), "hidden_size must be an integer"),
  ("hidden_size 64 (checkpoint 32)", _edit(B, hidden_size=64), "but the checkpoint has"),
  ("vocab_size 1e9", _edit(B, vocab_size=1e9), "vocab_size must be an integer"),
  ("vocab_size missing", _json(B, {"hidden_size": 32}), "vocab_size must be an integer"),
  ("intermediate_size 65 (checkpoint 64)", _edit(B, intermediate_size=65), "intermediate"),
  (
    "max_position_embeddings 128 (checkpoint 64)",
    _edit(B, max_position_embeddings=128),
    "position",
  ),
  ('hidden_act "swish"', _edit(B, hidden_act="swish"), "hidden_act must be one of"),
  ("hidden_dropout_prob 2", _edit(B, hidden_dropout_prob=2), "hidden_dropout_prob must be"),
  ("layer_norm_eps -1", _edit(B, layer_norm_eps=-1), "layer_norm_eps must be"),
  ("vocab of 10M lines", _write("vocab.txt", b"w\n" * 10_000_000), "more than 30522 lines"),
  ("empty vocab", _write("vocab.txt", b""), "the file is empty"),
  ("non-UTF-8 vocab", _write("vocab.txt", b"[CLS]\n\xff\xfe\n"), "not UTF-8"),
  ("vocab without [SEP]", _vocab_without("[SEP]"), "lacks ['[SEP]']"),
  ("max_seq_length 1e9", _edit(N, max_seq_length=1e9), "max_seq_length must be an integer"),
  ("max_seq_length 1000000000 on 64 positions", _edit(N, max_seq_length=10**9), "64 positions"),
  ("max_seq_length 2", _edit(N, max_seq_length=2), "max_seq_length must be"),
  ('head "crf"', _edit(N, head="crf"), "head must be one of"),
  ('head "bilstm" on a dense checkpoint', _edit(N, head="bilstm"), "no checkpoint of the dir"),
  ("feature_layers [5] of 2 layers", _edit(N, feature_layers=[5]), "the encoder has 2 layers"),
  ('feature_layers "abc"', _edit(N, feature_layers="abc"), "feature_layers must be"),
  ("feature_layers [-2, -1] (head built on one)", _edit(N, feature_layers=[-2, -1]), "[64, 12]"),
  ("lstm_size 0", _edit(N, lstm_size=0), "lstm_size must be"),
  ('dropout "x"', _edit(N, dropout="x"), "dropout must be"),
  ("adapter_first_layer 99", _edit(N, adapter_first_layer=99), "adapter_first_layer 99"),
  ("ner_config not JSON", _write(N, b"head: dense"), "not JSON"),
  ("label id 1e12", _json("label2id.json", {"O": 0, "B-PER": 10**12}), "not below"),
  ("label id 1e19", _json("label2id.json", {"O": 0, "B-PER": 10**19}), "not below"),
  ("label map nested 100k deep", _write("label2id.json", DEEP), "nested too deep"),
  ("label map not JSON", _write("label2id.json", b"O: 0"), "not JSON"),
  ("checkpoint index garbage", _write("model.ckpt-1.index", b"\0" * 64), "unreadable checkpoint"),
]


@pytest.fixture(scope="module")
def good_dir(tiny_bert_dir, tmp_path_factory):
  """A tiny dense-head checkpoint dir (2 layers, hidden 32, 64 positions, 12 labels)."""
  return make_checkpoint(tiny_bert_dir, tmp_path_factory.mktemp("hostile") / "good")


@pytest.mark.parametrize("case,edit,message", CASES, ids=[c[0] for c in CASES])
def test_hostile_checkpoint_dir_is_refused(case, edit, message, good_dir, tmp_path, capsys, report):
  from bert_ner.export.__main__ import main

  ckpt = tmp_path / "ckpt"
  shutil.copytree(good_dir, ckpt)
  edit(ckpt)
  base = tmp_path / "base"
  process = psutil.Process()
  rss_before = process.memory_info().rss
  started = time.monotonic()
  status = main(["--checkpoint", str(ckpt), "--model_base_path", str(base)])
  seconds = time.monotonic() - started
  grown_mb = (process.memory_info().rss - rss_before) / 2**20
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  ok = (
    status == 2
    and len(lines) == 1
    and lines[0].startswith("export: error: ")
    and message in lines[0]
    and not any(base.glob("*/saved_model.pb"))
    and seconds < REFUSAL_LIMIT_S
    and grown_mb < RSS_LIMIT_MB
  )
  report.add(
    "bad files",
    f"export of a checkpoint dir with {case}",
    "python -m bert_ner.export",
    f"exit 2, one 'error:' line naming the problem, nothing exported, < {REFUSAL_LIMIT_S:.0f} s",
    f"exit {status} in {seconds:.2f} s, RSS +{grown_mb:.0f} MB: "
    + excerpt(err.replace(f"cannot export {ckpt}: ", "").replace(str(ckpt), "<dir>"), 150),
    ok,
  )
  assert ok, (status, seconds, grown_mb, err)


# ---------------------------------------------------------------- training data

CONLL = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
TRAIN_CASES = [
  # (case, what --train or --dev gets, what the one error line must say)
  ("--train DIR", "train", lambda p: p.mkdir(), "is a directory, not a CoNLL file"),
  ("--dev DIR", "dev", lambda p: p.mkdir(), "is a directory, not a CoNLL file"),
  (
    "--train file not UTF-8 (a Latin-1 'café')",
    "train",
    lambda p: p.write_bytes(CONLL.encode() + b"caf\xe9 NN B-NP O\n"),
    "not UTF-8",
  ),
  (
    "--train file with no entities (every tag O)",
    "train",
    lambda p: p.write_text(CONLL.replace("B-ORG", "O").replace("B-PER", "O")),
    "has no entities",
  ),
]


@pytest.mark.parametrize("case,flag,make,message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_data_is_refused(
  case, flag, make, message, tiny_bert_dir, tmp_path, capsys, report
):
  from bert_ner.train.__main__ import main

  files = {"train": tmp_path / "train.txt", "dev": tmp_path / "dev.txt"}
  for path in files.values():
    path.write_text(CONLL)
  files[flag] = tmp_path / f"bad-{flag}"
  make(files[flag])
  argv = ["--train", files["train"], "--dev", files["dev"], "--backbone", tiny_bert_dir]
  argv += ["--out", tmp_path / "out", "--epochs", "1", "--cache_dir", tmp_path / "cache"]
  started = time.monotonic()
  status = main([str(a) for a in argv])
  seconds = time.monotonic() - started
  lines = capsys.readouterr().err.strip().splitlines()
  ok = (
    status == 2
    and len(lines) == 1
    and message in lines[0]
    and str(files[flag]) in lines[0]
    and not (tmp_path / "out").exists()
  )
  report.add(
    "bad files",
    f"python -m bert_ner.train {case}",
    "python -m bert_ner.train",
    "exit 2, one 'error:' line naming the file, nothing trained",
    f"exit {status} in {seconds:.1f} s: "
    + excerpt(" | ".join(lines).replace(str(tmp_path), "<tmp>"), 150),
    ok,
  )
  assert ok, (status, lines)


def test_a_byte_order_mark_before_docstart_is_no_sentence(tmp_path, report):
  from bert_ner import conll

  path = tmp_path / "bom.txt"
  path.write_bytes(b"\xef\xbb\xbf" + CONLL.encode())
  documents = conll.read_documents(path)
  words = [s.words for d in documents for s in d]
  ok = words == [["EU", "rejects"], ["Peter"]] and len(documents) == 1
  report.add(
    "bad files",
    "CoNLL file starting with a UTF-8 byte order mark before -DOCSTART-",
    "bert_ner.conll",
    "the mark is skipped: 1 document, sentences [EU rejects], [Peter]",
    f"{len(documents)} document(s), sentences {words}",
    ok,
  )
  assert ok, documents
