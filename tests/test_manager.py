"""The model manager with fake loads (no TensorFlow): a version that cannot finish loading holds
neither the manager nor the process."""

import asyncio
import os
import threading

from server import config as server_config
from server import manager as manager_module
from server.manager import ModelManager


class FakeServable:
  """What the manager reads of a Servable."""

  def __init__(self, name, version, path=None):
    self.name, self.version, self.path, self.refs = name, version, path, 0

  async def close(self):
    pass


def versions(tmp_path, *numbers):
  """A model base with a saved_model.pb file in each version folder."""
  for number in numbers:
    (tmp_path / str(number)).mkdir()
    (tmp_path / str(number) / "saved_model.pb").write_bytes(b"")
  return tmp_path


def spec():
  from tensorflow_serving.apis import model_pb2

  return model_pb2.ModelSpec(name="m")


def serve_then_add(tmp_path, load, add_second):
  """Serves version 1, adds version 2 by add_second(folder) and polls, then adds a good version
  3 and polls: (served, states) after each poll."""
  base = versions(tmp_path, 1)

  async def main():
    models = ModelManager(load)
    await asyncio.wait_for(models.reload(server_config.single_model_config("m", str(base))), 5)
    (base / "2").mkdir()
    add_second(base / "2")
    await asyncio.wait_for(models.poll(), 5)
    second = models.latest_version("m"), models.status(spec())
    versions(base, 3)
    await asyncio.wait_for(models.poll(), 5)
    return second, (models.latest_version("m"), models.status(spec()))

  return asyncio.run(main())


def errors(status):
  return {s.version: s.status.error_message for s in status.model_version_status}


def test_a_fifo_in_a_version_is_refused_without_opening_it(tmp_path):
  # Opening the FIFO would block until someone writes to it.
  (served, status), (then, _) = serve_then_add(
    tmp_path, FakeServable, lambda folder: os.mkfifo(folder / "saved_model.pb")
  )
  assert served == 1
  assert errors(status)[2] == "OSError: saved_model.pb is not a regular file"
  assert then == 3


def test_a_load_that_never_ends_times_out_and_later_versions_load(tmp_path, monkeypatch):
  monkeypatch.setattr(manager_module, "LOAD_TIMEOUT_S", 0.2)
  stuck = threading.Event()

  def load(name, version, path):
    if version == 2:
      stuck.wait(30)  # a read that never returns
    return FakeServable(name, version)

  def add_second(folder):
    (folder / "saved_model.pb").write_bytes(b"")

  try:
    (served, status), (then, _) = serve_then_add(tmp_path, load, add_second)
  finally:
    stuck.set()
  assert served == 1
  assert errors(status)[2] == "TimeoutError: not loaded within 0.2 s"
  assert then == 3
