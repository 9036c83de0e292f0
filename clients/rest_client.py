"""Tags sentences with the served bert_ner model over REST (TF Serving's /v1/models API)."""

import os
import re
import sys

if not __package__:  # run as a script from a checkout that is not pip-installed
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
  import numpy as np
  import requests

  from clients import common
except ModuleNotFoundError as missing:  # e.g. the system python3 instead of the venv's
  if __name__ != "__main__":
    raise
  from clients.deps import exit_without
  exit_without(missing)

HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE",
              504: "DEADLINE_EXCEEDED"}


def error_detail(response):
  """The "error" TF Serving puts in a failed response, else the start of the body."""
  try:
    return response.json()["error"]
  except (ValueError, KeyError, TypeError):
    return response.text[:200]


class RestNerClient(common.NerClient):
  """bert_ner client over TensorFlow Serving's REST API."""

  def __init__(self, server, model="bert_ner", signature="result", timeout=10.0, assets=None):
    super().__init__(server, model, signature, timeout, assets)
    self.url = server if "://" in server else f"http://{server}"
    self.session = requests.Session()

  def run(self, input_ids, input_mask):
    """pred_label [B, T] for one padded batch."""
    body = {"signature_name": self.signature,
            "inputs": {"input_ids": input_ids.tolist(), "input_mask": input_mask.tolist()}}
    outputs = self._call("POST", f"/v1/models/{self.model}:predict", json=body)["outputs"]
    if isinstance(outputs, dict):  # TF Serving names the outputs only when there are several
      outputs = outputs[common.OUTPUT]
    return np.asarray(outputs, dtype=np.int32)

  def output_names(self):
    """Output tensor names per signature, from GET /v1/models/<model>/metadata."""
    metadata = self._call("GET", f"/v1/models/{self.model}/metadata")["metadata"]
    return {name: [info["name"] for info in sig.get("outputs", {}).values()]
            for name, sig in metadata["signature_def"]["signature_def"].items()}

  def _call(self, method, path, **kwargs):
    try:
      response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
    except requests.Timeout:
      raise self.error("DEADLINE_EXCEEDED") from None
    except requests.ConnectionError as e:
      reason = re.search(r"\[Errno [^\]]*\] [^'\")]*", str(e))
      raise self.error("UNAVAILABLE", reason.group(0) if reason else type(e).__name__) from None
    if response.status_code != 200:
      code = HTTP_CODES.get(response.status_code, f"HTTP {response.status_code}")
      raise self.error(code, error_detail(response))
    try:
      return response.json()
    except ValueError:
      raise common.ClientError(f"{self.url}{path} did not answer JSON") from None


if __name__ == "__main__":
  sys.exit(common.main(RestNerClient, __doc__, "localhost:8501"))
