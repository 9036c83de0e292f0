"""Offline rendering and schema validation of k8s/: a kustomize loader for the subset the repo
uses, the Kubernetes JSON schemas of the pinned kubernetes-validate, and a JSON schema of KServe's
InferenceService built from the pinned kserve package's generated model classes.

The kserve wheel ships no CRD YAML or OpenAPI document, only the Python classes its OpenAPI
generator wrote (one per schema object: `openapi_types`, `attribute_map`, setters refusing None
for required fields). They are read here with `ast`, never imported: the package's __init__ needs
a model server stack the project does not install (kserve is installed with --no-deps).
"""

import ast
import copy
import importlib.util
import json
import re
from pathlib import Path

import kubernetes_validate
import yaml

# The Kubernetes release the manifests are validated against (strict: unknown fields fail).
K8S_VERSION = "1.33.0"
KUSTOMIZE_KEYS = {
  "apiVersion",
  "kind",
  "resources",
  "configMapGenerator",
  "generatorOptions",
  "patches",
  "images",
}


# ---------------------------------------------------------------- kustomize subset


def load_yaml_documents(path):
  """Every non-empty YAML document of a file."""
  return [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]


def _json_pointer_parent(document, pointer):
  """(container, last key) of a JSON pointer; '-' appends to a list."""
  parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
  node = document
  for part in parts[:-1]:
    node = node[int(part)] if isinstance(node, list) else node[part]
  return node, parts[-1]


def apply_json6902(document, operations):
  """Applies add / replace / remove operations (RFC 6902) to a copy of the document."""
  document = copy.deepcopy(document)
  for op in operations:
    parent, key = _json_pointer_parent(document, op["path"])
    if op["op"] == "add" and isinstance(parent, list):
      parent.insert(len(parent) if key == "-" else int(key), op["value"])
    elif op["op"] in ("add", "replace"):
      parent[int(key) if isinstance(parent, list) else key] = op["value"]
    elif op["op"] == "remove":
      del parent[int(key) if isinstance(parent, list) else key]
    else:
      raise ValueError(f"JSON patch op {op['op']!r} is not handled by this loader")
  return document


def _matches(target, document):
  """Whether a patch target (group, version, kind, name) selects the document."""
  group, _, version = document["apiVersion"].rpartition("/")
  wanted = {
    "group": group,
    "version": version,
    "kind": document["kind"],
    "name": document["metadata"]["name"],
  }
  return all(wanted[k] == v for k, v in target.items())


def render(directory):
  """The resources `kustomize build directory` emits, for the kustomization keys the repo uses.

  Raises ValueError on anything else (the loader must not silently differ from kustomize).
  """
  directory = Path(directory)
  kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
  unknown = set(kustomization) - KUSTOMIZE_KEYS
  if unknown:
    raise ValueError(f"{directory}: kustomization keys {sorted(unknown)} not handled")
  resources = []
  for entry in kustomization.get("resources", []):
    path = directory / entry
    resources += render(path) if path.is_dir() else load_yaml_documents(path)
  generators = kustomization.get("configMapGenerator", [])
  if generators and not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash"):
    raise ValueError(f"{directory}: name suffix hashes are not computed by this loader")
  for generator in generators:
    _generate_config_map(directory, generator, resources)
  for patch in kustomization.get("patches", []):
    operations = yaml.safe_load(patch["patch"])
    selected = [i for i, r in enumerate(resources) if _matches(patch["target"], r)]
    if not selected:
      raise ValueError(f"{directory}: patch target {patch['target']} selects nothing")
    for i in selected:
      resources[i] = apply_json6902(resources[i], operations)
  for image in kustomization.get("images", []):
    _set_image(resources, image)
  return resources


def _generate_config_map(directory, generator, resources):
  """Adds a configMapGenerator's ConfigMap to resources, or merges its files into the one of the
  same name (`behavior: merge`) that an included kustomization generated."""
  data = {}
  for entry in generator["files"]:
    key, _, source = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
    data[key] = (directory / source).read_text()
  behavior = generator.get("behavior", "create")
  same_name = [
    r for r in resources if r["kind"] == "ConfigMap" and r["metadata"]["name"] == generator["name"]
  ]
  if behavior == "create" and not same_name:
    resources.append(
      {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": data,
      }
    )
  elif behavior == "merge" and len(same_name) == 1:
    same_name[0]["data"] = {**same_name[0]["data"], **data}
  else:
    raise ValueError(
      f"{directory}: configMapGenerator {generator['name']!r} with behavior {behavior!r} "
      f"over {len(same_name)} ConfigMap(s) of that name is not handled by this loader"
    )


def _set_image(resources, image):
  """The `images:` transformer: containers whose image is `name` (any tag) get newName/newTag."""
  if set(image) - {"name", "newName", "newTag"}:
    raise ValueError(f"images entry {image} is not handled by this loader")
  for resource in resources:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
      name, _, tag = container["image"].partition(":")
      if name == image["name"]:
        tag = image.get("newTag", tag)
        container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


def by_kind_and_name(resources):
  """{(kind, name): resource}."""
  return {(r["kind"], r["metadata"]["name"]): r for r in resources}


# ---------------------------------------------------------------- Kubernetes schemas


def validate_kubernetes(resource):
  """Validates against the pinned Kubernetes version's strict schema; returns that version."""
  return kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def kubernetes_definitions():
  """The strict `_definitions.json` of K8S_VERSION shipped in kubernetes-validate."""
  root = Path(importlib.util.find_spec("kubernetes_validate").origin).parent
  path = root / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
  return json.loads(path.read_text())["$defs"]


# ---------------------------------------------------------------- KServe schema


def kserve_version():
  """Version of the installed kserve distribution."""
  from importlib.metadata import version

  return version("kserve")


def kserve_models_dir():
  """kserve/models of the installed wheel, located without importing the package."""
  spec = importlib.util.find_spec("kserve")
  if spec is None:
    raise FileNotFoundError("the kserve package is not installed (make setup installs it)")
  return Path(next(iter(spec.submodule_search_locations))) / "models"


REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def kserve_classes():
  """{class name: (openapi_types, attribute_map, required attribute names)} of kserve.models."""
  classes = {}
  for path in sorted(kserve_models_dir().glob("*.py")):
    source = path.read_text()
    for node in ast.parse(source).body:
      if not isinstance(node, ast.ClassDef):
        continue
      fields = {
        target.id: ast.literal_eval(statement.value)
        for statement in node.body
        if isinstance(statement, ast.Assign)
        for target in statement.targets
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map")
      }
      if "openapi_types" in fields:
        classes[node.name] = (
          fields["openapi_types"],
          fields["attribute_map"],
          set(REQUIRED.findall(ast.get_source_segment(source, node))),
        )
  return classes


def _kubernetes_ref(type_name, definitions):
  """$ref into the Kubernetes definitions for a generated type name (V1Probe, ...).

  A type newer than K8S_VERSION gets a schema no value satisfies: the manifest may not use it.
  """
  special = {
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "K8sIoApiAppsV1DeploymentStrategy": "io.k8s.api.apps.v1.DeploymentStrategy",
  }
  if type_name in special:
    return {"$ref": f"#/k8s/{special[type_name]}"}
  kind = type_name.removeprefix("V1")
  for prefix in ("io.k8s.api.core.v1.", "io.k8s.apimachinery.pkg.apis.meta.v1."):
    if prefix + kind in definitions:
      return {"$ref": f"#/k8s/{prefix}{kind}"}
  return {"not": {}, "description": f"{type_name}: not in Kubernetes {K8S_VERSION}"}


def _schema_of(type_string, classes, definitions, wanted):
  """JSON schema of one openapi_types type string; KServe classes it names go into `wanted`."""
  scalars = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "float": {"type": "number"},
    "datetime": {"type": "string"},
    "object": {},
    "dict": {"type": "object"},
  }
  if type_string in scalars:
    return scalars[type_string]
  if match := re.fullmatch(r"list\[(.+)\]", type_string):
    return {"type": "array", "items": _schema_of(match.group(1), classes, definitions, wanted)}
  if match := re.fullmatch(r"dict\(str, (.+)\)", type_string):
    return {
      "type": "object",
      "additionalProperties": _schema_of(match.group(1), classes, definitions, wanted),
    }
  if type_string in classes:
    wanted.append(type_string)
    return {"$ref": f"#/kserve/{type_string}"}
  if type_string.startswith(("Knative", "NetUrl", "GithubComKedacore")):
    return {}  # status and third-party types, never written in a manifest here
  return _kubernetes_ref(type_string, definitions)


def kserve_schema(root="V1beta1InferenceService"):
  """JSON schema of a KServe resource: each generated class reachable from `root` an object
  schema that refuses unknown fields and requires what its setters require; Kubernetes types
  from K8S_VERSION."""
  classes, definitions = kserve_classes(), kubernetes_definitions()
  kserve, wanted = {}, [root]
  while wanted:
    name = wanted.pop()
    if name in kserve:
      continue
    types, json_names, required = classes[name]
    kserve[name] = {
      "type": "object",
      "properties": {
        json_names[attr]: _schema_of(t, classes, definitions, wanted) for attr, t in types.items()
      },
      "required": sorted(json_names[attr] for attr in required),
      "additionalProperties": False,
    }
  # Kubernetes definitions refer to each other as #/$defs/<name>.
  text = json.dumps(definitions).replace('"#/$defs/', '"#/k8s/')
  return {"$ref": f"#/kserve/{root}", "kserve": kserve, "k8s": json.loads(text)}


def validate_kserve(resource, schema=None):
  """Raises jsonschema.ValidationError unless the resource fits KServe's InferenceService."""
  import jsonschema

  jsonschema.Draft202012Validator(schema or kserve_schema()).validate(resource)
