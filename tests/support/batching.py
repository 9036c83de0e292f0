"""Batching test stand-ins: a fake model and signature, and a scripted run of the batcher."""

import asyncio
import dataclasses
import threading
from concurrent import futures

import numpy as np

from bert_ner.server.batching import Batcher
from bert_ner.server.metrics import Metrics


@dataclasses.dataclass
class FakeSignature:
  """What the Batcher reads of a Signature."""

  key: str = "serving_default"
  batchable: bool = True
  inputs: dict = dataclasses.field(default_factory=dict)
  outputs: dict = dataclasses.field(default_factory=dict)


class FakeModel:
  """Runs batches on the worker threads: echoes each request's ids, records the batches."""

  def __init__(self):
    self.batches, self.abandoned = [], []  # abandoned(): once per batch, when it is released
    self.started, self.release = threading.Event(), threading.Event()
    self.release.set()

  def __call__(self, signature, requests, deadline, abandoned):
    self.started.set()
    self.release.wait(10)
    self.abandoned.append(abandoned())
    self.batches.append([len(r["input_ids"]) for r in requests])
    return [{"pred_label": r["input_ids"]} for r in requests]


def rows(count, width=3):
  """A request of `count` rows of `width` distinct ids."""
  return {"input_ids": np.arange(count * width).reshape(count, width)}


def run_batcher(options, scenario):
  """Runs scenario(batcher, model) in a fresh event loop with 2 worker threads."""
  model = FakeModel()

  async def main():
    with futures.ThreadPoolExecutor(2) as executor:
      batcher = Batcher(model, options, executor, Metrics(options.max_batch_size), "m")
      try:
        return await scenario(batcher, model)
      finally:
        model.release.set()
        await batcher.close()

  return asyncio.run(main()), model
