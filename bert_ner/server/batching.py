"""Server-side batching as TF Serving 2.18's --enable_batching does it, seen from a client.

The queue is TF Serving's (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h, the
TensorFlow TF Serving 2.18.0 builds): a task over max_batch_size is refused with INVALID_ARGUMENT
"Task size N is larger than maximum input batch size M" before anything is allocated for it;
tasks join the open batch until it would overflow, then a new batch opens, and a task that needs
a new batch while max_enqueued_batches are already queued gets UNAVAILABLE. With
enable_large_batch_splitting a task is cut into a head that fills the open batch and pieces of
max_execution_batch_size. A batch is taken by one of num_batch_threads workers when it is closed,
full, or batch_timeout_micros after its first task arrived; while every worker is busy the open
batch keeps filling. Tasks whose caller went away (timed out, cancelled) before their batch ran
are dropped, and a batch runs with the latest deadline of its tasks, as BatchingSession passes
its tasks' RunOptions timeout to the session.

`Servable.run` merges a batch's tasks as BatchingSession does (bert_ner/server/stacking.py).
"""

import asyncio
import dataclasses
import logging
import os

import grpc
from google.protobuf import text_format  # type: ignore[import-untyped]

from bert_ner.paths import REPO_ROOT
from bert_ner.server.errors import ServingError, invalid
from bert_ner.server.stacking import join_pieces, padded_batch_size
from bert_ner.server.tfs_config_pb2 import BatchingParameters

# The image's settings; the embedded server reads the same file unless told otherwise.
DEFAULT_PARAMETERS_FILE = REPO_ROOT / "docker" / "batching_parameters.txt"
# BatchingParameters fields accepted in the file but without effect here.
_IGNORED = ("thread_pool_name",)
# An empty queue (one per request shape without padding) is freed after this long: distinct
# shapes would otherwise each keep a queue and its collector task for the servable's life.
QUEUE_IDLE_S = 60.0


class BatchingConfigError(ValueError):
  """A batching parameters file TF Serving would refuse; the message is TF Serving's."""


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
  """How requests are merged; enabled=False runs every request on its own.

  The defaults are TF Serving's for fields a BatchingParameters file leaves unset
  (SharedBatchScheduler::Options and QueueOptions, bundle_factory_util.h GetQueueOptions).
  """

  enabled: bool = True
  max_batch_size: int = 1000  # QueueOptions.input_batch_size_limit
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = 10
  num_batch_threads: int = len(os.sched_getaffinity(0))  # port::MaxParallelism()
  enable_large_batch_splitting: bool = False
  max_execution_batch_size: int | None = None  # None: max_batch_size
  allowed_batch_sizes: tuple = ()
  pad_variable_length_inputs: bool = False

  @property
  def execution_batch_size(self):
    """Rows a batch holds at most: max_execution_batch_size when splitting, else max_batch_size."""
    if self.enable_large_batch_splitting and self.max_execution_batch_size:
      return self.max_execution_batch_size
    return self.max_batch_size

  def check(self):
    """Refuses settings TF Serving refuses at model load, with its messages."""
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
      if getattr(self, name) < 1:
        raise BatchingConfigError(f"{name} must be positive; was {getattr(self, name)}")
    if self.batch_timeout_micros < 0:
      raise BatchingConfigError(
        f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}"
      )
    if self.execution_batch_size < 1 or self.execution_batch_size > self.max_batch_size:
      raise BatchingConfigError(
        "max_execution_batch_size must be positive and at most max_batch_size; was "
        f"{self.execution_batch_size}"
      )
    sizes = self.allowed_batch_sizes
    if sizes and sizes[-1] != self.max_batch_size:  # bundle_factory_util.cc
      raise BatchingConfigError(
        "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
        f"{sizes[-1]}; expected {self.max_batch_size}"
      )
    if any(a >= b for a, b in zip(sizes, sizes[1:])) or (sizes and sizes[0] < 1):
      raise BatchingConfigError("allowed_batch_sizes entries must be monotonically increasing")
    return self


_WRAPPED = (
  "max_batch_size",
  "batch_timeout_micros",
  "max_enqueued_batches",
  "num_batch_threads",
  "enable_large_batch_splitting",
  "max_execution_batch_size",
)


def read_batching_parameters(path, defaults=BatchingOptions()):
  """Reads a --batching_parameters_file (text BatchingParameters); unset fields keep defaults.

  Raises OSError if unreadable, BatchingConfigError if malformed or refused as TF Serving would.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as error:  # a file that is not UTF-8: one line, not a traceback
    raise BatchingConfigError(f"cannot read {path}: {error}") from None
  try:
    params = text_format.Parse(text, BatchingParameters())
  except text_format.ParseError as error:
    raise BatchingConfigError(f"{path}: {error}") from None
  ignored = [f.name for f, _ in params.ListFields() if f.name in _IGNORED]
  if ignored:
    logging.warning("%s: ignoring %s", path, ", ".join(ignored))
  values = {name: getattr(params, name).value for name in _WRAPPED if params.HasField(name)}
  if params.allowed_batch_sizes:
    values["allowed_batch_sizes"] = tuple(params.allowed_batch_sizes)
  # A proto3 bool: as in TF Serving, a file that wants padding says so.
  options = dataclasses.replace(
    defaults, pad_variable_length_inputs=params.pad_variable_length_inputs, **values
  )
  if options.enable_large_batch_splitting and options.pad_variable_length_inputs:
    # batching_session.cc SplitInputTask joins the pieces' outputs with tensor::Concat, which
    # assumes every piece came back as wide as the first; merged with wider requests they do not.
    logging.warning(
      "%s: TF Serving 2.18 joins the pieces of a split task unchecked "
      "(tensor::Concat): with pad_variable_length_inputs they may differ in width",
      path,
    )
  try:
    return options.check()
  except BatchingConfigError as error:
    raise BatchingConfigError(f"{path}: {error}") from None


def unavailable(message):
  """UNAVAILABLE: the batch queue is full (HTTP 503)."""
  return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def split_sizes(rows, open_batch_remaining, execution_batch_size):
  """Rows of the pieces a split task becomes: a head filling the open batch, then full pieces
  and a tail (TensorFlow's batching_util/input_split_metadata.cc)."""
  head = min(rows, max(open_batch_remaining, 0))
  full, tail = divmod(rows - head, execution_batch_size)
  return [size for size in [head, *[execution_batch_size] * full, tail] if size]


@dataclasses.dataclass(eq=False)
class Task:
  """One request (or one piece of a split request) waiting for its batch."""

  inputs: dict
  rows: int
  future: asyncio.Future
  deadline: float | None  # event-loop time after which nobody waits for the result


class _Queue:
  """One batch queue: closed batches, then the open batch (TF Serving's Queue)."""

  def __init__(self):
    self.batches = [[]]
    self.opened_at = 0.0  # when the open batch got its first task
    self.changed = asyncio.Event()

  @property
  def open_rows(self):
    """Rows in the open batch."""
    return sum(task.rows for task in self.batches[-1])

  def add(self, task, execution_batch_size, now):
    """Appends a task, closing the open batch first if the task would overflow it."""
    if self.batches[-1] and self.open_rows + task.rows > execution_batch_size:
      self.batches.append([])
    if not self.batches[-1]:
      self.opened_at = now
    self.batches[-1].append(task)
    self.changed.set()

  def discard(self, task):
    """Removes a task whose caller went away, if its batch has not started."""
    for batch in self.batches:
      if task in batch:
        batch.remove(task)
        if not batch and len(self.batches) > 1 and batch is not self.batches[-1]:
          self.batches.remove(batch)
        return


class Batcher:
  """Merges requests of one tensor signature into batches run on the worker threads."""

  def __init__(self, run, options, executor, metrics, model_name):
    # (signature, [inputs], deadline, abandoned) -> [outputs or ServingError], blocking
    self._run = run
    self._options = options
    self._executor = executor
    self._metrics = metrics
    self._model_name = model_name
    self._slots = asyncio.Semaphore(options.num_batch_threads)
    self._queues = {}
    self._collectors = set()
    self._jobs = set()

  async def run(self, signature, inputs, timeout_s=None):
    """Returns one request's outputs, raising its ServingError if it failed or was refused."""
    loop = asyncio.get_running_loop()
    rows = self.task_size(signature, {a: v.shape for a, v in inputs.items()})
    deadline = None if timeout_s is None else loop.time() + timeout_s
    if not (self._options.enabled and signature.batchable):
      task = Task(inputs, rows, loop.create_future(), deadline)
      await self._launch(signature, [task])
      return await task.future
    queue = self._queue(signature, inputs)
    pieces = self._schedule(queue, inputs, rows, deadline)
    try:
      results = await asyncio.gather(*(piece.future for piece in pieces))
    finally:
      for piece in pieces:
        piece.future.cancel()  # a no-op once done; otherwise the caller went away
    return join_pieces(results)

  def task_size(self, signature, shapes):
    """The task size of inputs of these shapes, refused over max_batch_size before anything is
    allocated for it (also for warm-up requests, which TF Serving runs through the same batching
    session)."""
    if not signature.batchable:
      return 1
    sizes = {shape[0] for shape in shapes.values()}
    if len(sizes) > 1:  # batching_util.h ComputeTensorBatchSize
      raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    rows = sizes.pop()
    self.check_rows(signature, rows)
    return rows

  def check_rows(self, signature, rows):
    """Refuses a task of more rows than max_batch_size. Also with batching off: unlike TF
    Serving, which would then run a [2**31, 0] request (gigabytes of per-row state), the limit
    holds for every request here."""
    if signature.batchable and rows > self._options.max_batch_size:
      raise invalid(
        f"Task size {rows} is larger than maximum input batch size {self._options.max_batch_size}"
      )

  def _schedule(self, queue, inputs, rows, deadline):
    """Queues a task (or its pieces) as Queue::Schedule does; refuses it if the queue is full."""
    options, loop = self._options, asyncio.get_running_loop()
    execution = options.execution_batch_size
    if options.enable_large_batch_splitting:
      capacity = (
        (options.max_enqueued_batches - len(queue.batches)) * execution
        + execution
        - queue.open_rows
      )
      if rows > capacity:
        raise unavailable(
          "The batch scheduling queue to which this task was submitted is full; task size is "
          f"{rows} but scheduling capacity is only {capacity} (num_enqueued_batches="
          f"{len(queue.batches)}, max_enqueued_batches={options.max_enqueued_batches}, "
          f"open_batch_size={queue.open_rows}, max_execution_batch_size={execution})"
        )
      sizes = split_sizes(rows, execution - queue.open_rows, execution)
    else:
      if (
        queue.open_rows + rows > options.max_batch_size
        and len(queue.batches) >= options.max_enqueued_batches
      ):
        raise unavailable(
          "The batch scheduling queue to which this task was submitted is full; currently "
          f"{len(queue.batches)} batches enqueued and max_enqueued_batches is "
          f"{options.max_enqueued_batches}"
        )
      sizes = [rows]
    pieces, start = [], 0
    for size in sizes:
      piece_inputs = (
        inputs if size == rows else {a: v[start : start + size] for a, v in inputs.items()}
      )
      piece = Task(piece_inputs, size, loop.create_future(), deadline)
      piece.future.add_done_callback(lambda _, piece=piece: queue.discard(piece))
      queue.add(piece, execution, loop.time())
      pieces.append(piece)
      start += size
    return pieces

  def _queue(self, signature, inputs):
    """The queue for requests that can share a run: same tensors (TF Serving's
    TensorSignature: signatures naming the same tensors share it) and, without padding, shapes."""
    key = (
      tuple(t.name for t in signature.inputs.values()),
      tuple(t.name for t in signature.outputs.values()),
    )
    if not self._options.pad_variable_length_inputs:
      # TF Serving would fail a whole batch of mixed shapes (FAILED_PRECONDITION "Tensors with
      # name ... have different shapes and padding is turned off"); here they queue apart.
      key += (tuple(a.shape[1:] for a in inputs.values()),)
    if key not in self._queues:
      self._queues[key] = _Queue()
      collector = asyncio.create_task(self._collect(key, signature, self._queues[key]))
      self._collectors.add(collector)
      collector.add_done_callback(self._collectors.discard)
    return self._queues[key]

  async def _collect(self, key, signature, queue):
    """Hands the queue's batches to free workers; frees the queue once it idled QUEUE_IDLE_S
    (a later request of its shape opens a new one)."""
    while await self._wait_for_work(queue):
      await self._slots.acquire()
      batch = await self._take_batch(queue)
      if batch:
        self._start(signature, batch)
      else:
        self._slots.release()
    del self._queues[key]  # no await since the queue was seen empty: nothing joined it

  @staticmethod
  async def _wait_for_work(queue):
    """True once the queue holds a task; False once it stayed empty for QUEUE_IDLE_S."""
    while not any(queue.batches):
      queue.changed.clear()
      try:
        await asyncio.wait_for(queue.changed.wait(), QUEUE_IDLE_S)
      except TimeoutError:
        return any(queue.batches)
    return True

  async def _take_batch(self, queue):
    """The next batch for the worker slot the caller holds: a closed one, else the open one once
    full or batch_timeout_micros old ([] if its tasks all went away meanwhile)."""
    loop = asyncio.get_running_loop()
    timeout = self._options.batch_timeout_micros / 1e6
    while True:
      if len(queue.batches) > 1:
        return queue.batches.pop(0)
      if not queue.batches[0]:
        return []
      wait = queue.opened_at + timeout - loop.time()
      if queue.open_rows >= self._options.execution_batch_size or wait <= 0:
        queue.batches.append([])
        return queue.batches.pop(0)
      queue.changed.clear()
      try:
        await asyncio.wait_for(queue.changed.wait(), wait)
      except TimeoutError:
        pass

  async def _launch(self, signature, batch):
    """Starts an unbatched task once one of num_batch_threads is free."""
    await self._slots.acquire()
    self._start(signature, batch)

  def _start(self, signature, batch):
    """Runs a batch on the worker slot its caller holds."""
    job = asyncio.create_task(self._execute(signature, batch))
    self._jobs.add(job)
    job.add_done_callback(self._jobs.discard)

  async def _execute(self, signature, batch):
    """Runs a batch off the event loop and hands each task its own result."""
    loop = asyncio.get_running_loop()
    live = [task for task in batch if not task.future.done()]  # callers still waiting
    deadlines = [task.deadline for task in live]
    deadline = None if None in deadlines else max(deadlines, default=None)
    try:
      if not live:
        return
      if deadline is not None and deadline <= loop.time():  # batching_session.cc ProcessBatch
        results = [
          ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Run() timeout exceeded while waiting in batching queue",
          )
        ]
        results *= len(live)
      else:
        rows = padded_batch_size(sum(t.rows for t in live), self._options.allowed_batch_sizes)
        self._metrics.batch_size.observe(rows, model_name=self._model_name)
        results = await loop.run_in_executor(
          self._executor,
          self._run,
          signature,
          [t.inputs for t in live],
          deadline,
          lambda: all(task.future.done() for task in live),  # every caller went away
        )
    except Exception as error:  # A bug, not a model error: fail the batch, keep serving.
      logging.exception("Batch of %d requests failed", len(batch))
      results = [ServingError(grpc.StatusCode.INTERNAL, f"batch failed: {error}")] * len(live)
    finally:
      self._slots.release()
    for task, result in zip(live, results):
      if task.future.done():
        continue
      if isinstance(result, ServingError):
        task.future.set_exception(result)
      else:
        task.future.set_result(result)

  async def close(self):
    """Stops collecting; called when no request can reach this batcher any more."""
    for collector in list(self._collectors):
      collector.cancel()
    await asyncio.gather(*self._collectors, *self._jobs, return_exceptions=True)
