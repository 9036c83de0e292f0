"""Models and versions as TF Serving's ServerCore runs them with the file-system source.

A ModelServerConfig (from --model_config_file, or the one model of --model_name and
--model_base_path) names models, their base paths, version policies and labels. Each poll lists a
base path, keeps the folder names TF Serving parses as int64 versions (others are ignored with one
warning), picks the aspired versions by policy and applies the availability-preserving policy:
new versions load (and warm up) while the old ones keep serving, and a version that is no longer
aspired (replaced, or its folder deleted) is unloaded once an aspired version is available or
nothing is aspired any more. A version that fails to load is reported by GetModelStatus as END
with its error and retried only when its files change (e.g. a copy that was still in progress).
"""

import asyncio
import contextlib
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, cast

import grpc
from tensorflow_serving.apis import get_model_status_pb2

from bert_ner import model_base
from bert_ner.server import config as server_config
from bert_ner.server.errors import ServingError, invalid, not_found

State = get_model_status_pb2.ModelVersionStatus.State
UNKNOWN_MODEL_LABEL = "<unknown model>"  # metrics label for names that are not served
HIDDEN = "."  # dot folders (the exporter's .tmp-<version>-<pid>) are skipped without a warning
# A load (and its warm-up) still running after this long fails, and the manager moves on: one
# that never ends (a hung mount) would otherwise hold every later poll and config reload.
LOAD_TIMEOUT_S = 300.0
# _dir_snapshot: (file path relative to the version, size, mtime in ns) of every file.
Snapshot = list[tuple[str, int, int]]
# A version's state for GetModelStatus: (state, error code, error message).
VersionState = tuple[Any, grpc.StatusCode, str]


class Loaded(Protocol):
  """What the manager needs of a loaded version (server.servable.Servable, or a test's fake)."""

  name: str
  version: int
  refs: int  # requests holding it; a retired version is unloaded at 0

  def close(self) -> Awaitable[None]: ...


# (name, version, path) -> a loaded version; blocking, run on a thread of its own.
Loader = Callable[[str, int, str], Loaded]


class _Model:
  """One configured model: its base path, policy, loaded versions and their states."""

  def __init__(self, model_config: Any) -> None:
    self.name: str = model_config.name
    self.update(model_config)
    self.loaded: dict[int, Loaded] = {}  # loaded, serving unless retired
    self.failed: dict[int, Snapshot] = {}  # the files of a version that failed to load
    self.listing_error: str | None = None  # last listing problem, logged once per change
    self.warned: set[str] = set()  # folder names already reported as not versions

  def update(self, model_config: Any) -> None:
    """Takes a (re)loaded config's base path and version policy."""
    self.base_path: str = model_config.base_path
    self.policy = server_config.VersionPolicy.from_proto(model_config.model_version_policy)

  def latest(self) -> Loaded | None:
    """The highest loaded version, or None."""
    return self.loaded[max(self.loaded)] if self.loaded else None


class ModelManager:
  """Serves the configured models' aspired versions, swapping them as folders come and go."""

  def __init__(self, load: Loader, allow_version_labels_for_unavailable_models: bool = False):
    self._load = load
    self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
    self._models: dict[str, _Model] = {}
    self._labels: dict[str, dict[str, int]] = {}  # name -> {label: version}
    self._states: dict[str, dict[int, VersionState]] = {}  # name -> {version: state}
    self._retired: set[Loaded] = set()  # no longer served, unloaded when their refs reach 0
    self._unloads: set[asyncio.Task[None]] = set()
    self._lock = asyncio.Lock()  # one poll or reload at a time

  @property
  def names(self) -> list[str]:
    """The configured model names."""
    return sorted(self._models)

  def latest_version(self, name: str) -> int | None:
    """The highest version a model serves, or None."""
    servable = self._models[name].latest() if name in self._models else None
    return servable.version if servable else None

  def metric_label(self, name: str) -> str:
    """The model_name a metric series gets: the name if configured, else one shared label, so
    that requests naming arbitrary models cannot grow the metrics page."""
    return name if name in self._models else UNKNOWN_MODEL_LABEL

  async def reload(self, config: Any) -> list[str]:
    """Applies a ModelServerConfig as ServerCore::ReloadConfig does; raises ServingError for a
    refused config, returns the newly added models that did not become available."""
    server_config.validate(config)
    if config.WhichOneof("config") is None:
      logging.info("Taking no action for empty config.")
      return []
    async with self._lock:
      models = {m.name: m for m in config.model_config_list.config}
      self._labels = self._checked_labels(models.values())
      new = [name for name in models if name not in self._models]
      for name in [n for n in self._models if n not in models]:
        logging.info("Removing model %s", name)
        for servable in self._models.pop(name).loaded.values():
          self._retire(servable)
      for name, model_config in models.items():
        self._models.setdefault(name, _Model(model_config)).update(model_config)
      await self._poll_locked()
    return sorted(n for n in new if n in self._models and self._models[n].latest() is None)

  def _checked_labels(self, model_configs: Iterable[Any]) -> dict[str, dict[str, int]]:
    """The new label map; a label may name only an available version (UpdateModelVersionLabelMap)
    unless --allow_version_labels_for_unavailable_models, and then not move an existing label."""
    labels: dict[str, dict[str, int]] = {}
    for model_config in model_configs:
      name = model_config.name
      for label, version in sorted(model_config.version_labels.items()):
        available = version in getattr(self._models.get(name), "loaded", {})
        moved = self._labels.get(name, {}).get(label, version) != version
        if not available and (moved or not self._allow_unavailable_labels):
          raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Request to assign label to version {version} of model {name}, "
            "which is not currently available for inference",
          )
        labels.setdefault(name, {})[label] = version
    return labels

  async def wait_until_available(self, interval: float) -> None:
    """Polls until every configured model serves a version, as tensorflow_model_server starts."""
    while missing := [m.name for m in self._models.values() if m.latest() is None]:
      logging.warning("Waiting for a loadable version of %s", ", ".join(missing))
      await asyncio.sleep(interval or 1)
      await self.poll()

  async def poll_forever(self, interval: float) -> None:
    """Polls every interval seconds; polling errors are logged, never fatal."""
    while True:
      await asyncio.sleep(interval)
      try:
        await self.poll()
      except Exception:
        logging.exception("Polling the model base paths failed")

  async def poll(self) -> None:
    """Lists every base path once and loads or unloads versions to match."""
    async with self._lock:
      await self._poll_locked()

  async def _poll_locked(self) -> None:
    """poll() with the lock held."""
    for model in list(self._models.values()):
      on_disk = await asyncio.to_thread(self._list_versions, model)
      if on_disk is not None:
        await self._apply(model, model.policy.aspired(on_disk), on_disk)

  def _list_versions(self, model: _Model) -> dict[int, str] | None:
    """{version: folder} under the base path, or None when it cannot be listed (TF Serving then
    keeps serving what it has). Names that are not versions get one warning each."""
    try:
      names = os.listdir(model.base_path)
    except OSError as error:
      message = (
        f"Could not find base path {model.base_path} for servable {model.name}: {error.strerror}"
      )
      if message != model.listing_error:
        logging.warning("%s", message)
      model.listing_error = message
      return None
    folders = model_base.version_names(names)
    for name in sorted(set(names) - set(folders.values()) - model.warned):
      if model_base.parse_version(name) is None and not name.startswith(HIDDEN):
        logging.warning("Ignoring %r under %s: not a version number (int64)", name, model.base_path)
      model.warned.add(name)
    listing_error = (
      None
      if folders
      else (f"No versions of servable {model.name} found under base path {model.base_path}")
    )
    if listing_error and listing_error != model.listing_error:
      logging.warning("%s", listing_error)
    model.listing_error = listing_error
    return folders

  async def _apply(self, model: _Model, aspired: set[int], folders: dict[int, str]) -> None:
    """Loads aspired versions (newest first), then unloads the rest when that keeps a version
    available, as AvailabilityPreservingPolicy orders actions."""
    for version in sorted(aspired - set(model.loaded), reverse=True):
      path = os.path.join(model.base_path, folders[version])
      snapshot = await asyncio.to_thread(_dir_snapshot, path)
      if model.failed.get(version) == snapshot:
        continue
      servable = await self._load_version(model, version, path, snapshot)
      if servable:
        model.loaded[version] = servable
        self._set_state(model.name, version, State.AVAILABLE)
        logging.info("Serving %s version %d", model.name, version)
    unaspired = set(model.loaded) - aspired
    if unaspired and (not aspired or aspired & set(model.loaded)):
      for version in sorted(unaspired):
        self._retire(model.loaded.pop(version))

  async def _load_version(
    self, model: _Model, version: int, path: str, snapshot: Snapshot
  ) -> Loaded | None:
    """Loads one version in a worker thread; a failure is logged and remembered, never raised."""
    self._set_state(model.name, version, State.LOADING)
    try:
      special = await asyncio.to_thread(_special_file, path)
      if special:  # opening a FIFO blocks until someone writes to it
        raise OSError(f"{special} is not a regular file")
      try:
        servable = await asyncio.wait_for(
          _load_in_daemon_thread(self._load, model.name, version, path), LOAD_TIMEOUT_S
        )
      except TimeoutError:
        raise TimeoutError(f"not loaded within {LOAD_TIMEOUT_S:g} s") from None
    except Exception as error:
      message = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
      logging.error("Skipping %s version %d: %s", model.name, version, message)
      model.failed[version] = snapshot
      self._set_state(model.name, version, State.END, grpc.StatusCode.UNKNOWN, message)
      return None
    model.failed.pop(version, None)
    return servable

  def _set_state(
    self,
    name: str,
    version: int,
    state: Any,
    code: grpc.StatusCode = grpc.StatusCode.OK,
    message: str = "",
  ) -> None:
    """Records a version's state for GetModelStatus."""
    self._states.setdefault(name, {})[version] = (state, code, message)

  def _retire(self, servable: Loaded) -> None:
    """Stops routing requests to a version; it is unloaded once no request holds it."""
    self._set_state(servable.name, servable.version, State.UNLOADING)
    self._retired.add(servable)
    self._unload_if_idle(servable)

  def _unload_if_idle(self, servable: Loaded) -> None:
    """Unloads a retired version once no request holds it."""
    if servable in self._retired and servable.refs == 0:
      self._retired.discard(servable)
      task = asyncio.create_task(self._unload(servable))
      self._unloads.add(task)
      task.add_done_callback(self._unloads.discard)

  async def _unload(self, servable: Loaded) -> None:
    """Closes a retired version's batcher and session."""
    await servable.close()
    self._set_state(servable.name, servable.version, State.END)
    logging.info("Unloaded %s version %d", servable.name, servable.version)

  @contextlib.contextmanager
  def acquire(self, spec: Any) -> Iterator[Loaded]:
    """Holds the version a ModelSpec names so that it is not unloaded mid-request."""
    servable = self._find(spec)
    servable.refs += 1
    try:
      yield servable
    finally:
      servable.refs -= 1
      self._unload_if_idle(servable)

  def _find(self, spec: Any) -> Loaded:
    """The servable for a ModelSpec, with ServerCore::GetServableHandle's errors."""
    if not spec.name:
      raise invalid("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    model = self._models.get(spec.name)
    if choice == "version_label":
      version = self._labels.get(spec.name, {}).get(spec.version_label)
      if version is None:
        raise invalid(f"Unrecognized servable version label: {spec.version_label}")
      servable = model and model.loaded.get(version)
    elif choice == "version":
      version = spec.version.value
      servable = model and model.loaded.get(version)
    else:
      servable = model and model.latest()
    if not servable:
      request = f"Latest({spec.name})" if choice is None else f"Specific({spec.name}, {version})"
      raise not_found(f"Servable not found for request: {request}")
    return servable

  def status(self, spec: Any) -> Any:
    """GetModelStatusResponse: every version seen, or the one asked for (a label is ignored,
    as GetModelStatusImpl looks only at model_spec.version)."""
    states = self._states.get(spec.name, {})
    if spec.HasField("version"):
      if spec.version.value not in states:
        raise not_found(f"Could not find version {spec.version.value} of model {spec.name}")
      versions = [spec.version.value]
    elif not states:
      raise not_found(f"Could not find any versions of model {spec.name}")
    else:
      versions = sorted(states, reverse=True)
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in versions:
      state, code, message = states[version]
      status = response.model_version_status.add(version=version, state=state)
      status.status.error_code = code.value[0]
      status.status.error_message = message
    return response

  async def close(self) -> None:
    """Unloads every version; called after both front-ends stopped taking requests."""
    for model in self._models.values():
      for servable in model.loaded.values():
        self._retired.add(servable)
      model.loaded.clear()
    await asyncio.gather(*(s.close() for s in self._retired), *self._unloads)
    self._retired.clear()


def _special_file(path: str) -> str | None:
  """The first file under a version that is not a regular file (FIFO, device, socket), or None."""
  for root, _, files in os.walk(path):
    for name in sorted(files):
      with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(os.path.join(root, name)).st_mode):
          return os.path.relpath(os.path.join(root, name), path)
  return None


async def _load_in_daemon_thread(load: Loader, name: str, version: int, path: str) -> Loaded:
  """load(name, version, path) on a daemon thread of its own: a load stuck in a read holds
  neither the default executor nor the process's exit (SIGTERM left it alive for 50+ s). A
  servable that arrives after its caller gave up is closed."""
  loop = asyncio.get_running_loop()
  future: asyncio.Future[Loaded] = loop.create_future()

  def settle(result: Loaded | None, error: Exception | None) -> None:
    if future.cancelled():
      if result is not None:
        logging.warning("Closing %s version %d: loaded after its timeout", name, version)
        asyncio.ensure_future(result.close())
    elif error is not None:
      future.set_exception(error)
    else:
      future.set_result(cast(Loaded, result))

  def run() -> None:
    outcome: tuple[Loaded | None, Exception | None]
    try:
      outcome = (load(name, version, path), None)
    except Exception as error:
      outcome = (None, error)
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
      loop.call_soon_threadsafe(settle, *outcome)

  threading.Thread(target=run, name="load", daemon=True).start()
  return await future


def _dir_snapshot(path: str) -> Snapshot:
  """Names, sizes and mtimes of a version's files: a failed version is retried if they change."""
  entries = []
  for root, _, files in os.walk(path):
    for name in files:
      with contextlib.suppress(OSError):
        stat = os.stat(os.path.join(root, name))
        entries.append(
          (os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns)
        )
  return sorted(entries)
