"""tensorflow_model_server's config files and version folders, read as TF Serving 2.18 reads them.

--model_config_file is a text ModelServerConfig (tensorflow_serving.config.model_server_config_pb2
from the tensorflow-serving-api package). --monitoring_config_file is a text MonitoringConfig; the
package ships no monitoring_config_pb2, so it comes from bert_ner/server/tfs_config.proto.
"""

import dataclasses
from collections.abc import Iterable
from typing import Any, Self, TypeAlias

import grpc
from google.protobuf import text_format  # type: ignore[import-untyped]
from tensorflow_serving.config import model_server_config_pb2

from bert_ner.server.errors import ServingError
from bert_ner.server.tfs_config_pb2 import MonitoringConfig

PLATFORM = "tensorflow"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath

# TF Serving's generated messages carry no types: to mypy this alias is Any.
ModelServerConfig: TypeAlias = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig


class ConfigError(Exception):
  """A config file that cannot be used; the message is one line naming the file."""


def _read_text_proto(path: str, message_class: Any) -> Any:
  """Parses a text-format proto file; any failure is one ConfigError line."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as error:
    raise ConfigError(f"cannot read {path}: {error}") from None
  try:
    return text_format.Parse(text, message_class())
  except text_format.ParseError as error:
    raise ConfigError(f"{path} is not a text {message_class.DESCRIPTOR.name}: {error}") from None


def read_model_server_config(path: str) -> ModelServerConfig:
  """The ModelServerConfig in a --model_config_file."""
  return _read_text_proto(path, ModelServerConfig)


def read_monitoring_config(path: str) -> MonitoringConfig:
  """The MonitoringConfig in a --monitoring_config_file."""
  return _read_text_proto(path, MonitoringConfig)


def prometheus_path(monitoring: MonitoringConfig | None) -> str | None:
  """The Prometheus page's path, or None when the config does not enable it (TF Serving's
  default: no metrics page without --monitoring_config_file)."""
  if monitoring is None or not monitoring.prometheus_config.enable:
    return None
  return monitoring.prometheus_config.path or PROMETHEUS_PATH


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
  """The config --model_name/--model_base_path stand for (server.cc BuildSingleModelConfig)."""
  config = ModelServerConfig()
  config.model_config_list.config.add(name=name, base_path=base_path, model_platform=PLATFORM)
  return config


def validate(config: ModelServerConfig) -> None:
  """Refuses what ServerCore::ReloadConfig refuses, with its codes and messages."""
  kind = config.WhichOneof("config")
  if kind is None:
    return
  if kind != "model_config_list":
    raise ServingError(
      grpc.StatusCode.INVALID_ARGUMENT,
      "ServerModelConfig type not supported by HandleReloadConfigRequest. "
      "Only ModelConfigList is currently supported",
    )
  names = set()
  for model in config.model_config_list.config:
    if model.name in names:
      raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Illegal to list model {model.name} multiple times in config list",
      )
    names.add(model.name)
    platform = model.model_platform or (PLATFORM if model.model_type == 1 else "")
    if model.model_type and model.model_platform:
      raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "Illegal setting both ModelServerConfig::model_type (deprecated) and "
        f"ModelServerConfig::model_platform, model name is {model.name}",
      )
    if not platform:
      raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "Illegal setting neither ModelServerConfig::model_type (deprecated) "
        f"nor ModelServerConfig::model_platform, model name is {model.name}",
      )
    if platform != PLATFORM:
      raise ServingError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"PlatformConfigMap has no entry for platform {platform}",
      )


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
  """model_version_policy: 'latest' (num_versions newest), 'specific' (versions) or 'all'."""

  kind: str = "latest"
  num_versions: int = 1
  versions: frozenset[int] = frozenset()

  @classmethod
  def from_proto(cls, policy: Any) -> Self:
    """Reads a ServableVersionPolicy; unset means latest with one version."""
    kind = policy.WhichOneof("policy_choice") or "latest"
    return cls(kind, max(policy.latest.num_versions, 1), frozenset(policy.specific.versions))

  def aspired(self, versions: Iterable[int]) -> set[int]:
    """The versions to serve among those present on disk."""
    if self.kind == "all":
      return set(versions)
    if self.kind == "specific":
      return set(versions) & self.versions
    return set(sorted(versions, reverse=True)[: self.num_versions])
