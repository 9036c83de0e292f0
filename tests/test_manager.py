"""The model manager's version lifecycle with a fake loader (no TensorFlow), as TF Serving's
aspired_versions_manager_test.cc drives its manager: new versions load and take over, old ones
unload only once the new one is ready and no request holds them, a failed load keeps the old
version serving, a folder removed from disk unloads its version, and the version policies pick
what is loaded. A version that cannot finish loading holds neither the manager nor the process."""

import asyncio
import os
import shutil
import threading

import pytest

from bert_ner.server import config as server_config
from bert_ner.server import manager as manager_module
from bert_ner.server.manager import ModelManager, State


class FakeServable:
  """What the manager reads of a Servable; `closed` once the manager unloaded it."""

  def __init__(self, name, version, path=None):
    self.name, self.version, self.path, self.refs = name, version, path, 0
    self.closed = False

  async def close(self):
    self.closed = True


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


class FakeLoader:
  """load(name, version, path) for the manager: FakeServables, remembered by version; versions in
  `failing` raise, versions in `gates` wait for their event first (a load still running)."""

  def __init__(self, failing=(), gates=None):
    self.failing, self.gates = set(failing), gates or {}
    self.loaded = {}
    self.attempts = []

  def __call__(self, name, version, path):
    self.attempts.append(version)
    if version in self.gates:
      self.gates[version].wait(5)
    if version in self.failing:
      raise ValueError(f"cannot load version {version}")
    self.loaded[version] = FakeServable(name, version, path)
    return self.loaded[version]


def config_for(base, policy=None):
  """The one-model config of model "m" at base; policy(proto) sets its version policy."""
  config = server_config.single_model_config("m", str(base))
  if policy:
    policy(config.model_config_list.config[0].model_version_policy)
  return config


async def settle():
  """Lets the unload tasks the manager started run."""
  for _ in range(3):
    await asyncio.sleep(0)


def states(models):
  """{version: state name} as GetModelStatus reports them."""
  status = models.status(spec())
  return {s.version: State.Name(s.state) for s in status.model_version_status}


def served_version(models, **version):
  """The version a request for model "m" (optionally naming a version) is served by."""
  from tensorflow_serving.apis import model_pb2

  with models.acquire(model_pb2.ModelSpec(name="m", **version)) as servable:
    return servable.version


def test_a_new_version_takes_over_and_the_old_one_unloads(tmp_path):
  base = versions(tmp_path, 1)
  load = FakeLoader()

  async def main():
    models = ModelManager(load)
    await models.reload(config_for(base))
    first = served_version(models)
    versions(base, 2)
    await models.poll()
    await settle()
    return models, first

  models, first = asyncio.run(main())
  assert first == 1
  assert served_version(models) == 2
  assert load.loaded[1].closed and not load.loaded[2].closed
  assert states(models) == {2: "AVAILABLE", 1: "END"}


def test_the_old_version_serves_until_the_new_one_is_ready(tmp_path):
  base = versions(tmp_path, 1)
  gate = threading.Event()
  load = FakeLoader(gates={2: gate})

  async def main():
    models = ModelManager(load)
    await models.reload(config_for(base))
    versions(base, 2)
    polling = asyncio.create_task(models.poll())
    while 2 not in load.attempts:
      await asyncio.sleep(0.01)
    during = served_version(models), states(models), load.loaded[1].closed
    gate.set()
    await polling
    await settle()
    return models, during

  models, (served, during_states, closed) = asyncio.run(main())
  assert served == 1 and not closed
  assert during_states == {2: "LOADING", 1: "AVAILABLE"}
  assert served_version(models) == 2 and load.loaded[1].closed


def test_a_failed_load_keeps_the_old_version_and_is_retried_when_its_files_change(tmp_path):
  base = versions(tmp_path, 1)
  load = FakeLoader(failing={2})

  async def main():
    models = ModelManager(load)
    await models.reload(config_for(base))
    versions(base, 2)
    await models.poll()
    await models.poll()  # the same files: not tried again
    after_failure = served_version(models), states(models), load.loaded[1].closed
    status = models.status(spec())
    tries = load.attempts.count(2)
    load.failing.clear()
    (base / "2" / "variables.index").write_bytes(b"now complete")
    await models.poll()
    await settle()
    return models, after_failure, status, tries

  models, (served, failed_states, closed), status, tries = asyncio.run(main())
  assert served == 1 and not closed
  assert failed_states == {2: "END", 1: "AVAILABLE"}
  assert errors(status)[2] == "ValueError: cannot load version 2"
  assert tries == 1
  assert served_version(models) == 2 and load.loaded[1].closed


def test_a_version_removed_from_disk_unloads_and_an_older_one_serves(tmp_path):
  base = versions(tmp_path, 1, 2)
  load = FakeLoader()

  async def main():
    models = ModelManager(load)
    await models.reload(config_for(base))
    first = served_version(models)
    shutil.rmtree(base / "2")
    await models.poll()
    await settle()
    return models, first

  models, first = asyncio.run(main())
  assert first == 2
  assert served_version(models) == 1
  assert load.loaded[2].closed and not load.loaded[1].closed


def test_a_retired_version_a_request_holds_unloads_when_it_is_released(tmp_path):
  from tensorflow_serving.apis import model_pb2

  base = versions(tmp_path, 1)
  load = FakeLoader()

  async def main():
    models = ModelManager(load)
    await models.reload(config_for(base))
    with models.acquire(model_pb2.ModelSpec(name="m")):
      versions(base, 2)
      await models.poll()
      await settle()
      held = load.loaded[1].closed
    await settle()
    return held

  held_closed = asyncio.run(main())
  assert not held_closed
  assert load.loaded[1].closed


@pytest.mark.parametrize(
  "policy, loaded",
  [
    (None, {3}),
    (lambda p: setattr(p.latest, "num_versions", 2), {2, 3}),
    (lambda p: p.all.SetInParent(), {1, 2, 3}),
    (lambda p: p.specific.versions.extend([1, 3]), {1, 3}),
  ],
  ids=["latest", "latest 2", "all", "specific 1 3"],
)
def test_the_version_policy_picks_the_versions_loaded(tmp_path, policy, loaded):
  base = versions(tmp_path, 1, 2, 3)
  load = FakeLoader()

  async def main():
    models = ModelManager(load)
    await models.reload(config_for(base, policy))
    return models

  models = asyncio.run(main())
  assert set(load.attempts) == loaded
  for version in loaded:
    assert served_version(models, version={"value": version}) == version
  assert served_version(models) == max(loaded)
