"""Version lifecycle as TF Serving's file-system source with the latest-version policy runs it.

A new version is loaded and warmed up in the background while the old one keeps serving; the
swap happens only after both succeed, and the old version is unloaded once its in-flight
requests finish. A version that fails is logged, reported by GetModelStatus as END with its
error, and retried only when its files change (e.g. a copy that was still in progress).
"""

import asyncio
import contextlib
import logging
import os

import grpc
from tensorflow_serving.apis import get_model_status_pb2

from server.errors import not_found

State = get_model_status_pb2.ModelVersionStatus.State


class ModelManager:
  """Serves the newest loadable version under the base path and hot-swaps newer ones."""

  def __init__(self, name, base_path, load):
    self.name = name
    self._base_path = base_path
    self._load = load  # (version, path) -> Servable, blocking.
    self._current = None
    self._states = {}  # version -> (State, grpc.StatusCode, message)
    self._failed = {}  # version -> fingerprint of the files that failed to load
    self._unloads = set()

  async def wait_until_available(self, interval):
    """Polls until a version has loaded, as tensorflow_model_server starts; returns it."""
    while (servable := await self.poll()) is None:
      logging.warning('No loadable version of %s under %s yet', self.name, self._base_path)
      await asyncio.sleep(interval or 1)
    return servable

  async def poll_forever(self, interval):
    """Polls the base path every interval seconds; polling errors are logged, never fatal."""
    while True:
      await asyncio.sleep(interval)
      try:
        await self.poll()
      except Exception:
        logging.exception('Polling %s failed', self._base_path)

  async def poll(self):
    """Swaps in the newest version above the served one that loads; returns the served one."""
    for version in await asyncio.to_thread(self._versions):
      if self._current and version <= self._current.version:
        break
      path = os.path.join(self._base_path, str(version))
      fingerprint = await asyncio.to_thread(_fingerprint, path)
      if self._failed.get(version) == fingerprint:
        continue
      self._states[version] = (State.LOADING, grpc.StatusCode.OK, '')
      try:
        servable = await asyncio.to_thread(self._load, version, path)
      except Exception as error:
        message = f'{type(error).__name__}: {(str(error).splitlines() or [""])[0]}'
        logging.error('Skipping %s version %d: %s', self.name, version, message)
        self._failed[version] = fingerprint
        self._states[version] = (State.END, grpc.StatusCode.UNKNOWN, message)
        continue
      self._failed.pop(version, None)
      self._swap(servable)
      break
    return self._current

  def _versions(self):
    """Numeric version directories under the base path, newest first."""
    try:
      names = os.listdir(self._base_path)
    except FileNotFoundError:
      return []
    return sorted((int(n) for n in names
                   if n.isdigit() and os.path.isdir(os.path.join(self._base_path, n))),
                  reverse=True)

  def _swap(self, servable):
    """Makes servable the served version and retires the previous one."""
    old, self._current = self._current, servable
    self._states[servable.version] = (State.AVAILABLE, grpc.StatusCode.OK, '')
    logging.info('Serving %s version %d', self.name, servable.version)
    if old:
      self._states[old.version] = (State.UNLOADING, grpc.StatusCode.OK, '')
      self._unload_if_idle(old)

  def _unload_if_idle(self, servable):
    """Unloads a retired version once no request holds it."""
    if servable is not self._current and servable.refs == 0:
      task = asyncio.create_task(self._unload(servable))
      self._unloads.add(task)
      task.add_done_callback(self._unloads.discard)

  async def _unload(self, servable):
    """Closes a retired version's batcher and session."""
    await servable.close()
    self._states[servable.version] = (State.END, grpc.StatusCode.OK, '')
    logging.info('Unloaded %s version %d', self.name, servable.version)

  @contextlib.contextmanager
  def acquire(self, spec):
    """Holds the version a ModelSpec names so that it is not unloaded mid-request."""
    servable = self._find(spec)
    servable.refs += 1
    try:
      yield servable
    finally:
      servable.refs -= 1
      self._unload_if_idle(servable)

  def _find(self, spec):
    """The servable for a ModelSpec; only the served (latest) version is available."""
    if spec.version_label:
      raise not_found(f'Unrecognized servable version label: {spec.version_label}')
    version = spec.version.value if spec.HasField('version') else None
    if spec.name != self.name or self._current is None or version not in (
            None, self._current.version):
      request = (f'Latest({spec.name})' if version is None
                 else f'Specific({spec.name}, {version})')
      raise not_found(f'Servable not found for request: {request}')
    return self._current

  def status(self, spec):
    """GetModelStatusResponse for a ModelSpec: every version seen, or the one asked for."""
    if spec.name != self.name:
      raise not_found(f'Could not find any versions of model {spec.name}')
    if spec.version_label:
      raise not_found(f'Unrecognized servable version label: {spec.version_label}')
    versions = sorted(self._states, reverse=True)
    if spec.HasField('version'):
      if spec.version.value not in self._states:
        raise not_found(f'Could not find version {spec.version.value} of model {spec.name}')
      versions = [spec.version.value]
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in versions:
      state, code, message = self._states[version]
      status = response.model_version_status.add(version=version, state=state)
      status.status.error_code = code.value[0]
      status.status.error_message = message
    return response

  async def close(self):
    """Unloads every version; called after both front-ends stopped taking requests."""
    current, self._current = self._current, None
    if current:
      await current.close()
    await asyncio.gather(*self._unloads)


def _fingerprint(path):
  """Names, sizes and mtimes of a version's files: a failed version is retried if they change."""
  entries = []
  for root, _, files in os.walk(path):
    for name in files:
      stat = os.stat(os.path.join(root, name))
      entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size,
                      stat.st_mtime_ns))
  return sorted(entries)
