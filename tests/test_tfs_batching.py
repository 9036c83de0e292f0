"""The shipped model under TF Serving 2.18's batching: merged with any other requests, padded as
TF Serving pads them, a request gets exactly the tags it gets alone.

`tfs_merge` and `tfs_split` re-implement what TF Serving 2.18.0 does to the tensors of the
requests it batches (tensorflow_serving/batching/batching_session.cc and batching_util.cc):
  * BatchingSession::MergeInputTensors: with pad_variable_length_inputs, CalculateMaxDimSizes
    takes each input's largest size per axis over the batch's tasks, AddPadding ->
    PadTensorOfSpecificType -> PadTensor pads every task's tensor after its elements up to those
    sizes with `T pad_value(input.flat<T>()(0))`, the task tensor's FIRST element; then, if
    allowed_batch_sizes rounds the batch up (RoundToLowestAllowedBatchSize), the last task's first
    row (`tensor_vec.back().Slice(0, 1)`) is appended once per missing row; tensor::Concat joins
    the tasks along axis 0.
  * BatchingSession::SplitOutputTensors: tensor::Split cuts every output along axis 0 by the
    tasks' row counts (plus the padding rows, dropped); other axes are untouched, so a task gets
    back the merged batch's width.
The model runs in a plain TF1 session, as TF Serving's SavedModelBundle runs it. Zero padding
(what the embedded server did before, and what clients send inside their own requests) is tried
as well.
"""

import random

import numpy as np
import pytest

from bert_ner import conll, model_base
from bert_ner.featurizer import Featurizer, pad_batch
from support.export import DEFAULT_MODEL

pytestmark = pytest.mark.slow
MAX_BATCH_SIZE = 32  # rows of a merged batch; the tasks of one merge never exceed it
ALLOWED_BATCH_SIZES = (8, 16, 32)
MAX_REQUEST_ROWS = 4  # a request holds 1 to 4 windows, padded by the client to its longest
EMBEDDED_BATCHES = 60  # random merged batches the embedded server answers (run time)


def tfs_merge(tasks, pad="first", allowed_batch_sizes=()):
  """The merged input tensors of a batch of tasks (dicts of [rows, T] arrays), as TF Serving
  builds them; pad="zero" pads with 0 instead of the first element."""
  merged = {}
  rows = sum(len(next(iter(task.values()))) for task in tasks)
  padding_rows = next((size for size in allowed_batch_sizes if size >= rows), rows) - rows
  for name in tasks[0]:
    width = max(task[name].shape[1] for task in tasks)  # CalculateMaxDimSizes (axis 0 unused)
    parts = []
    for task in tasks:
      tensor = task[name]
      value = tensor.flat[0] if pad == "first" else 0  # PadTensor's pad_value
      parts.append(np.pad(tensor, [(0, 0), (0, width - tensor.shape[1])], constant_values=value))
    parts += [parts[-1][:1]] * padding_rows  # MergeInputTensors: the last task's first row
    merged[name] = np.concatenate(parts)
  return merged


def tfs_split(outputs, tasks):
  """Each task's rows of every output (SplitOutputTensors), padding rows dropped."""
  ends = np.cumsum([len(next(iter(task.values()))) for task in tasks])  # then the padding rows
  split = {name: np.split(value, ends)[: len(tasks)] for name, value in outputs.items()}
  return [{name: parts[i] for name, parts in split.items()} for i in range(len(tasks))]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """The shipped model exported by `python -m bert_ner.export`'s exporter: (version dir,
  featurizer)."""
  from bert_ner.export import exporter

  version = exporter.export_model(
    str(DEFAULT_MODEL), str(tmp_path_factory.mktemp("base")), log=lambda message: None
  )
  return version, Featurizer.from_dir(model_base.assets(version))


@pytest.fixture(scope="module")
def loaded(exported):
  """The SavedModel in a TF1 session, as TF Serving's SavedModelBundle holds it."""
  import tensorflow as tf

  session = tf.compat.v1.Session(graph=tf.Graph())
  meta_graph = tf.compat.v1.saved_model.loader.load(
    session, [tf.compat.v1.saved_model.SERVING], str(exported[0])
  )
  yield session, meta_graph.signature_def
  session.close()


def signature_runner(loaded, name):
  """run(inputs dict) -> outputs dict through one signature."""
  session, signatures = loaded
  signature = signatures[name]

  def run(inputs):
    return session.run(
      {a: t.name for a, t in signature.outputs.items()},
      {signature.inputs[a].name: v for a, v in inputs.items()},
    )

  return run


@pytest.fixture(scope="module")
def session_run(loaded):
  """run(inputs) through the ids signature (`result`)."""
  return signature_runner(loaded, model_base.SIGNATURE)


@pytest.fixture(scope="module")
def dev_requests(exported, conll_dev_path):
  """Every third dev sentence's windows (about 1,100: every length from 3 to 128 sub-tokens), cut
  into client requests of 1 to MAX_REQUEST_ROWS windows."""
  featurizer = exported[1]
  sentences = conll.read_conll(conll_dev_path)[::3]
  windows = [w for s in sentences for w in featurizer.encode_words(s.words)]
  rng = random.Random(0)
  requests, begin = [], 0
  while begin < len(windows):
    size = rng.randint(1, MAX_REQUEST_ROWS)
    input_ids, input_mask = pad_batch(windows[begin : begin + size])
    requests.append({"input_ids": input_ids, "input_mask": input_mask})
    begin += size
  return requests


def random_batches(requests, seed):
  """The requests shuffled and cut into merged batches of at most MAX_BATCH_SIZE rows."""
  rng = random.Random(seed)
  order = list(range(len(requests)))
  rng.shuffle(order)
  batches, batch, rows = [], [], 0
  for i in order:
    size = len(next(iter(requests[i].values())))
    limit = rng.randint(size, MAX_BATCH_SIZE)  # batches of every size, small to full
    if batch and rows + size > limit:
      batches.append(batch)
      batch, rows = [], 0
    batch.append(i)
    rows += size
  return batches + [batch]


# How a merged batch is padded: TF Serving's first element (with and without allowed_batch_sizes
# rows) and zeros. Batches take them in turn, so each request is merged once (run time).
PADDINGS = (("first", ALLOWED_BATCH_SIZES), ("first", ()), ("zero", ()))


def test_merged_requests_get_the_tags_they_get_alone(session_run, dev_requests):
  alone = [session_run(request)["pred_label"] for request in dev_requests]
  changed = wider = 0
  for number, batch in enumerate(random_batches(dev_requests, seed=1)):
    tasks = [dev_requests[i] for i in batch]
    outputs = session_run(tfs_merge(tasks, *PADDINGS[number % len(PADDINGS)]))
    for i, task_outputs in zip(batch, tfs_split(outputs, tasks)):
      got, own = task_outputs["pred_label"], alone[i]
      assert got.shape[0] == own.shape[0] and got.shape[1] >= own.shape[1]
      wider += got.shape[1] > own.shape[1]
      mask = dev_requests[i]["input_mask"] > 0
      changed += int(((got[:, : own.shape[1]] != own) & mask).sum())
      assert not got[:, own.shape[1] :].any()  # beyond the request: label 0
      assert not got[:, : own.shape[1]][~mask].any()  # its own padding: label 0
  tokens = sum(int(r["input_mask"].sum()) for r in dev_requests)
  rows = sum(len(r["input_mask"]) for r in dev_requests)
  print(
    f"changed tags: {changed} of {tokens} sub-tokens ({rows} windows of every third dev sentence, "
    f"{len(dev_requests)} requests; {wider} answers wider than their request)"
  )
  assert wider > len(dev_requests) / 2  # most requests were padded into wider batches
  assert changed == 0


@pytest.fixture(scope="module")
def servable(exported):
  """The embedded server's Servable of the export, batching as the image's settings say."""
  import concurrent.futures
  import dataclasses

  import tensorflow as tf

  from bert_ner.server.batching import DEFAULT_PARAMETERS_FILE, read_batching_parameters
  from bert_ner.server.metrics import Metrics
  from bert_ner.server.servable import Servable

  options = dataclasses.replace(
    read_batching_parameters(DEFAULT_PARAMETERS_FILE),
    allowed_batch_sizes=ALLOWED_BATCH_SIZES,
    max_batch_size=MAX_BATCH_SIZE,
  )
  with concurrent.futures.ThreadPoolExecutor(1) as executor:
    loaded = Servable(
      "bert_ner",
      1,
      str(exported[0]),
      tf.compat.v1.ConfigProto(),
      options,
      executor,
      Metrics(options.max_batch_size),
    )
    yield loaded
    loaded._session.close()


def test_embedded_length_groups_return_the_bytes_of_one_merged_run(
  servable, session_run, dev_requests
):
  from bert_ner.server.stacking import length_groups

  signature = servable.signature("result")
  grouped = 0
  for batch in random_batches(dev_requests, seed=2)[:EMBEDDED_BATCHES]:
    tasks = [dev_requests[i] for i in batch]
    merged = tfs_split(session_run(tfs_merge(tasks, "first", ALLOWED_BATCH_SIZES)), tasks)
    embedded = servable.run(signature, tasks)
    for want, got in zip(merged, embedded):
      assert got.keys() == want.keys()
      for alias in want:
        assert got[alias].dtype == want[alias].dtype and got[alias].shape == want[alias].shape
        assert got[alias].tobytes() == want[alias].tobytes()
    grouped += len(length_groups(tasks)) > 1
  assert grouped > EMBEDDED_BATCHES / 2  # most batches ran as several length groups


def test_merged_text_requests_get_the_entities_they_get_alone(loaded, conll_dev_path):
  """The text signature under TF Serving's batching: its one input is [batch] strings, so a merge
  is a concatenation and the outputs ([batch, entities]) come back split by rows, each request's
  padded to the merged batch's widest row. Entities (read up to num_entities) must not change."""
  from bert_ner.featurizer import text_entities

  run = signature_runner(loaded, model_base.TEXT_SIGNATURE)
  documents = conll.read_documents(conll_dev_path)[:40]
  texts = [" ".join(s.words) for d in documents for s in d][:400]
  texts += ["\n".join(" ".join(s.words) for s in d) for d in documents[:8]]  # long, many windows
  rng = random.Random(3)
  requests, begin = [], 0
  while begin < len(texts):
    size = rng.randint(1, MAX_REQUEST_ROWS)
    requests.append(texts[begin : begin + size])
    begin += size
  alone = [text_entities(r, run({"text": np.array(r, dtype=object)})) for r in requests]
  tasks_of = [{"text": np.array(r, dtype=object)} for r in requests]
  wider = 0
  for batch in random_batches(tasks_of, seed=4):
    tasks = [tasks_of[i] for i in batch]
    rows = sum(len(t["text"]) for t in tasks)
    padding_rows = next((n for n in ALLOWED_BATCH_SIZES if n >= rows), rows) - rows
    merged = np.concatenate([t["text"] for t in tasks] + [tasks[-1]["text"][:1]] * padding_rows)
    for i, task_outputs in zip(batch, tfs_split(run({"text": merged}), tasks)):
      assert text_entities(requests[i], task_outputs) == alone[i]
      width = task_outputs["entity_type"].shape[1]
      wider += width > max(task_outputs["num_entities"], default=0)
      # Padding beyond each row's entities: values no entity has.
      for row, count in enumerate(task_outputs["num_entities"]):
        assert (task_outputs["entity_start"][row, count:] == -1).all()
        assert (task_outputs["entity_score"][row, count:] == -1.0).all()
        assert all(t == b"" for t in task_outputs["entity_type"][row, count:])
  assert wider > 0
