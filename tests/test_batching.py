"""Embedded batching against TF Serving 2.18's rules, with a fake model (no session)."""

import asyncio

import grpc
import numpy as np
import pytest

from bert_ner.server.batching import (
  DEFAULT_PARAMETERS_FILE,
  BatchingConfigError,
  BatchingOptions,
  read_batching_parameters,
  split_sizes,
)
from bert_ner.server.errors import ServingError
from bert_ner.server.stacking import merge, pad_tensor, padded_batch_size
from support.batching import FakeSignature, rows, run_batcher


def test_the_image_settings_parse_and_fit_the_clients_rows_per_request():
  options = read_batching_parameters(DEFAULT_PARAMETERS_FILE)
  assert options.max_batch_size >= 64  # clients, evaluation and bench send 64 rows
  assert options.pad_variable_length_inputs and not options.enable_large_batch_splitting


@pytest.mark.parametrize(
  "text, message",
  [
    (
      "max_batch_size { value: 32 } allowed_batch_sizes: 8 allowed_batch_sizes: 16",
      "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 16; expected 32",
    ),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; was 0"),
    ("max_enqueued_batches { value: 0 }", "max_enqueued_batches must be positive; was 0"),
    ("no_such_field: 1", "no_such_field"),
  ],
)
def test_settings_tf_serving_refuses_are_refused(tmp_path, text, message):
  path = tmp_path / "batching.txt"
  path.write_text(text)
  with pytest.raises(BatchingConfigError, match=message):
    read_batching_parameters(path)


def test_a_file_that_is_not_utf8_is_one_error(tmp_path):
  path = tmp_path / "batching.txt"
  path.write_bytes(b"max_batch_size { value: 64 } # caf\xe9")
  with pytest.raises(BatchingConfigError, match=r"cannot read .*batching.txt: 'utf-8' codec"):
    read_batching_parameters(path)


def test_split_sizes_and_allowed_batch_sizes_follow_tensorflow():
  assert split_sizes(10, 3, 4) == [3, 4, 3]  # head fills the open batch, then full pieces
  assert split_sizes(8, 0, 4) == [4, 4]
  assert split_sizes(2, 5, 4) == [2]
  assert padded_batch_size(5, (4, 8, 16)) == 8
  assert padded_batch_size(20, (4, 8, 16)) == 20  # over the largest: as many rows as there are
  assert padded_batch_size(5, ()) == 5


def test_merge_pads_with_each_requests_first_element_and_rows_to_allowed_sizes():
  a = {"input_ids": np.array([[101, 7, 102]]), "input_mask": np.array([[1, 1, 1]])}
  b = {
    "input_ids": np.array([[101, 5, 6, 8, 102], [101, 9, 102, 0, 0]]),
    "input_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
  }
  merged, spans = merge(
    [a, b], BatchingOptions(pad_variable_length_inputs=True, allowed_batch_sizes=(4, 8))
  )
  np.testing.assert_array_equal(
    merged["input_ids"],
    [[101, 7, 102, 101, 101], [101, 5, 6, 8, 102], [101, 9, 102, 0, 0], [101, 5, 6, 8, 102]],
  )  # the padding row: the last request's first row
  np.testing.assert_array_equal(merged["input_mask"][0], [1, 1, 1, 1, 1])
  assert spans == [(0, 1, 1), (1, 3, 4)]


def test_an_empty_request_cannot_be_padded():
  with pytest.raises(ServingError, match="Got empty tensor in batch of non-empty tensors."):
    pad_tensor(np.zeros((1, 0), np.int32), [4])
  assert pad_tensor(np.zeros((0, 2), np.int32), [4]).shape == (0, 4)


def test_a_task_over_max_batch_size_is_refused_before_it_runs():
  async def scenario(batcher, model):
    with pytest.raises(ServingError) as error:
      await batcher.run(FakeSignature(), rows(2**31, 0))
    return error.value

  error, model = run_batcher(BatchingOptions(max_batch_size=64), scenario)
  assert error.code == grpc.StatusCode.INVALID_ARGUMENT
  assert error.message == "Task size 2147483648 is larger than maximum input batch size 64"
  assert model.batches == []


def test_a_full_queue_answers_unavailable_and_gone_callers_are_not_run():
  options = BatchingOptions(
    max_batch_size=4, max_enqueued_batches=2, num_batch_threads=1, batch_timeout_micros=0
  )

  async def scenario(batcher, model):
    model.release.clear()  # the worker blocks in the first batch
    running = asyncio.ensure_future(batcher.run(FakeSignature(), rows(4)))
    await asyncio.sleep(0.2)
    queued = [asyncio.ensure_future(batcher.run(FakeSignature(), rows(4))) for _ in range(2)]
    await asyncio.sleep(0.2)
    with pytest.raises(ServingError) as full:
      await batcher.run(FakeSignature(), rows(4))
    for task in queued:
      task.cancel()  # their callers go away before a worker is free
    await asyncio.sleep(0.1)
    model.release.set()
    await running
    after = await batcher.run(FakeSignature(), rows(1))
    return full.value, after

  (full, after), model = run_batcher(options, scenario)
  assert full.code == grpc.StatusCode.UNAVAILABLE
  assert full.message == (
    "The batch scheduling queue to which this task was submitted is "
    "full; currently 2 batches enqueued and max_enqueued_batches is 2"
  )
  assert model.batches == [[4], [1]]  # the two cancelled requests never ran
  assert after["pred_label"].shape == (1, 3)


def test_a_running_batch_sees_when_its_callers_went_away():
  """The run gets abandoned(), True once every task of its batch was cancelled (a gRPC client's
  RST_STREAM), so it can stop between session runs."""
  options = BatchingOptions(max_batch_size=4, num_batch_threads=1, batch_timeout_micros=0)

  async def scenario(batcher, model):
    model.release.clear()
    model.started.clear()
    running = asyncio.ensure_future(batcher.run(FakeSignature(), rows(2)))
    await asyncio.to_thread(model.started.wait, 10)
    running.cancel()
    await asyncio.sleep(0.1)
    model.release.set()
    with pytest.raises(asyncio.CancelledError):
      await running
    await batcher.run(FakeSignature(), rows(1))

  _, model = run_batcher(options, scenario)
  assert model.batches == [[2], [1]] and model.abandoned == [True, False]


def test_large_batch_splitting_runs_pieces_and_joins_them_in_order():
  options = BatchingOptions(
    max_batch_size=10,
    enable_large_batch_splitting=True,
    max_execution_batch_size=4,
    batch_timeout_micros=0,
  )

  async def scenario(batcher, model):
    return await batcher.run(FakeSignature(), rows(10))

  result, model = run_batcher(options, scenario)
  np.testing.assert_array_equal(result["pred_label"], rows(10)["input_ids"])
  assert sorted(sum(model.batches, [])) == [2, 4, 4]


def test_idle_queues_are_freed(monkeypatch):
  """Every request shape opens its own queue (and a task): one left idle is freed, so distinct
  shapes cannot pile up queues for the servable's life; a later request opens a new one."""
  monkeypatch.setattr("bert_ner.server.batching.QUEUE_IDLE_S", 0.05)

  async def scenario(batcher, model):
    requests = [
      asyncio.ensure_future(batcher.run(FakeSignature(), rows(1, w))) for w in range(1, 21)
    ]
    # Counted before the answers: once answered, a queue may idle out before the count on a
    # loaded machine (the test shortens the idle time to 50 ms).
    await asyncio.sleep(0)
    opened = len(batcher._queues)
    await asyncio.gather(*requests)
    await asyncio.sleep(0.3)
    idle = len(batcher._queues)
    again = await batcher.run(FakeSignature(), rows(2, 5))
    return opened, idle, again["pred_label"].shape

  (opened, idle, shape), _ = run_batcher(BatchingOptions(max_batch_size=64), scenario)
  assert (opened, idle, shape) == (20, 0, (2, 5))
