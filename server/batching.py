"""Server-side batching like TF Serving's --enable_batching: concurrent requests are merged.

At most num_batch_threads batches run at once. The next batch waits for a free worker first, and
keeps taking requests while it waits; it closes when it holds max_batch_size rows or
batch_timeout_micros after a worker became free. `Servable.run` then runs a merged batch in
length groups (padding at most PADDING_BUDGET times the real positions), one session run per
group. A request larger than max_batch_size runs alone instead of being refused.
"""

import asyncio
import dataclasses
import logging

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from server.errors import ServingError

# BatchingParameters fields accepted in the file but without effect here.
_IGNORED = ('max_enqueued_batches', 'thread_pool_name', 'allowed_batch_sizes')


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
  """How requests are merged; enabled=False runs every request on its own."""

  enabled: bool = True
  max_batch_size: int = 64
  batch_timeout_micros: int = 2000
  num_batch_threads: int = 2
  pad_variable_length_inputs: bool = True


def _batching_parameters_class():
  """TF Serving's BatchingParameters (session_bundle_config.proto); the pip package lacks it."""
  field = descriptor_pb2.FieldDescriptorProto
  file = descriptor_pb2.FileDescriptorProto(
      name='server/batching_parameters.proto', package='tensorflow.serving', syntax='proto3',
      dependency=['google/protobuf/wrappers.proto'])
  message = file.message_type.add(name='BatchingParameters')
  for number, (name, wrapper) in enumerate(
          [('max_batch_size', 'Int64Value'), ('batch_timeout_micros', 'Int64Value'),
           ('max_enqueued_batches', 'Int64Value'), ('num_batch_threads', 'Int64Value'),
           ('thread_pool_name', 'StringValue')], start=1):
    message.field.add(name=name, number=number, type=field.TYPE_MESSAGE,
                      type_name='.google.protobuf.' + wrapper, label=field.LABEL_OPTIONAL)
  message.field.add(name='allowed_batch_sizes', number=6, type=field.TYPE_INT64,
                    label=field.LABEL_REPEATED)
  message.field.add(name='pad_variable_length_inputs', number=7, type=field.TYPE_BOOL,
                    label=field.LABEL_OPTIONAL)
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  pool.Add(file)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName('tensorflow.serving.BatchingParameters'))


BatchingParameters = _batching_parameters_class()


def read_batching_parameters(path, defaults):
  """Reads a --batching_parameters_file (text BatchingParameters); unset fields keep defaults."""
  with open(path, encoding='utf-8') as f:
    params = text_format.Parse(f.read(), BatchingParameters(), allow_unknown_field=True)
  ignored = [f.name for f, _ in params.ListFields() if f.name in _IGNORED]
  if ignored:
    logging.warning('%s: ignoring %s', path, ', '.join(ignored))
  values = {name: getattr(params, name).value for name in
            ('max_batch_size', 'batch_timeout_micros', 'num_batch_threads')
            if params.HasField(name)}
  # A proto3 bool: as in TF Serving, a file that wants padding says so.
  return dataclasses.replace(
      defaults, pad_variable_length_inputs=params.pad_variable_length_inputs, **values)


@dataclasses.dataclass
class _Task:
  """One request waiting for its batch."""

  inputs: dict
  rows: int
  future: asyncio.Future


class Batcher:
  """Merges requests of one signature and shape class into batches run on the worker threads."""

  def __init__(self, run, options, executor, metrics, model_name):
    self._run = run
    self._options = options
    self._executor = executor
    self._metrics = metrics
    self._model_name = model_name
    self._slots = asyncio.Semaphore(options.num_batch_threads)
    self._queues = {}
    self._collectors = []
    self._jobs = set()

  async def run(self, signature, inputs):
    """Returns one request's outputs, raising its ServingError if it failed."""
    rows = next(iter(inputs.values())).shape[0] if signature.batchable else 1
    task = _Task(inputs, rows, asyncio.get_running_loop().create_future())
    if self._options.enabled and signature.batchable:
      self._queue(signature, inputs).put_nowait(task)
    else:
      await self._launch(signature, [task])
    return await task.future

  def _queue(self, signature, inputs):
    """The queue for requests that can share a run: same signature, same ranks (or shapes)."""
    shapes = tuple(a.ndim if self._options.pad_variable_length_inputs else a.shape[1:]
                   for a in inputs.values())
    key = (signature.key, shapes)
    if key not in self._queues:
      self._queues[key] = asyncio.Queue()
      self._collectors.append(
          asyncio.create_task(self._collect(signature, self._queues[key])))
    return self._queues[key]

  async def _collect(self, signature, queue):
    """Forms batches from one queue for as long as the servable lives."""
    loop = asyncio.get_running_loop()
    timeout = self._options.batch_timeout_micros / 1e6
    carry = None
    while True:
      first = carry or await queue.get()
      # Hold a free worker before closing the batch: while all workers are busy, requests keep
      # joining this batch instead of waiting in the queue behind a small one.
      await self._slots.acquire()
      batch, rows, carry = [first], first.rows, None
      deadline = loop.time() + timeout
      while rows < self._options.max_batch_size:
        try:
          task = await asyncio.wait_for(queue.get(), deadline - loop.time())
        except TimeoutError:
          break
        if rows + task.rows > self._options.max_batch_size:
          carry = task
          break
        batch.append(task)
        rows += task.rows
      self._start(signature, batch)

  async def _launch(self, signature, batch):
    """Starts a batch on a worker thread once one of num_batch_threads is free."""
    await self._slots.acquire()
    self._start(signature, batch)

  def _start(self, signature, batch):
    """Runs a batch on the worker slot its caller holds."""
    job = asyncio.create_task(self._execute(signature, batch))
    self._jobs.add(job)
    job.add_done_callback(self._jobs.discard)

  async def _execute(self, signature, batch):
    """Runs a batch off the event loop and hands each request its own result."""
    self._metrics.batch_size.observe(sum(t.rows for t in batch), model_name=self._model_name)
    try:
      results = await asyncio.get_running_loop().run_in_executor(
          self._executor, self._run, signature, [t.inputs for t in batch])
    except Exception as error:  # A bug, not a model error: fail the batch, keep serving.
      logging.exception('Batch of %d requests failed', len(batch))
      failure = ServingError(grpc.StatusCode.INTERNAL, f'batch failed: {error}')
      results = [failure] * len(batch)
    finally:
      self._slots.release()
    for task, result in zip(batch, results):
      if not task.future.done():
        if isinstance(result, ServingError):
          task.future.set_exception(result)
        else:
          task.future.set_result(result)

  async def close(self):
    """Stops collecting; called when no request can reach this batcher any more."""
    for collector in self._collectors:
      collector.cancel()
    await asyncio.gather(*self._collectors, *self._jobs, return_exceptions=True)
