"""The text signature served by `python -m bert_ner.server`: raw text over REST and gRPC, the
clients'
text mode against their ids mode, the length limit, and concurrent requests merged by batching."""

import base64
import concurrent.futures
import json
import subprocess
import sys

import pytest
import requests

from bert_ner import conll
from bert_ner.clients.common import ClientError
from bert_ner.clients.grpc_client import GrpcNerClient
from bert_ner.clients.rest_client import RestNerClient
from bert_ner.paths import REPO_ROOT
from e2e_support import served_shipped_model

pytestmark = pytest.mark.slow  # exports the shipped model (MiniLM) and starts the server
README_SENTENCE = "EU rejects German call"
TIMEOUT_S = 120  # per request: the cores may be shared with other test runs


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  with served_shipped_model(tmp_path_factory.mktemp("text") / "bert_ner") as served:
    yield served


def predict_rest(server, body):
  return requests.post(
    f"http://{server.rest}/v1/models/bert_ner:predict", data=json.dumps(body), timeout=60
  )


def test_raw_text_over_rest_needs_no_signature_name(served):
  server, _ = served
  answer = predict_rest(server, {"instances": [README_SENTENCE]})
  assert answer.status_code == 200, answer.text
  [row] = answer.json()["predictions"]
  assert row["num_entities"] == 2
  assert row["entity_type"] == ["ORG", "MISC"]
  assert row["entity_text"] == ["EU", "German"]
  assert (row["entity_start"], row["entity_end"]) == ([0, 11], [2, 17])
  assert all(0.9 < score <= 1.0 for score in row["entity_score"])


def test_base64_text_over_rest(served):
  server, _ = served
  encoded = base64.b64encode("Müller visits Paris".encode()).decode()
  answer = predict_rest(server, {"inputs": {"text": [{"b64": encoded}]}})
  assert answer.status_code == 200, answer.text
  outputs = answer.json()["outputs"]
  assert "Paris" in outputs["entity_text"][0]


def test_a_text_over_the_limit_is_invalid_argument_naming_it(served):
  server, _ = served
  # One long word reads as a single [UNK]: the text is cheap to tag however long it is.
  over, at = "x" * 19_995 + " Paris", "x" * 19_994 + " Paris"
  answer = predict_rest(server, {"instances": [over]})  # 20,001 characters
  assert answer.status_code == 400
  assert "over the limit of 20000 per text" in answer.json()["error"]
  client = GrpcNerClient(server.grpc, timeout=TIMEOUT_S)
  with pytest.raises(ClientError, match="INVALID_ARGUMENT.*over the limit of 20000"):
    client.predict([over])
  [found] = client.predict([at])  # 20,000 characters: answered, offsets up to the end
  assert found and found[-1].end == 20_000 and found[-1].text.endswith("Paris")


@pytest.mark.parametrize("client_class", [GrpcNerClient, RestNerClient])
def test_text_mode_equals_ids_mode(served, client_class, conll_dev_path):
  server, assets = served
  address = server.grpc if client_class is GrpcNerClient else server.rest
  text_client = client_class(address, timeout=TIMEOUT_S)  # no assets: the signature takes text
  ids_client = client_class(address, signature="result", timeout=TIMEOUT_S, assets=assets)
  documents = conll.read_documents(conll_dev_path)[:12]
  lines = [[" ".join(s.words) for s in d] for d in documents]
  sentences = [line for d in lines for line in d]
  assert text_client.predict(sentences, 16) == ids_client.predict(sentences, 16)
  assert text_client.text_in and not ids_client.text_in
  assert text_client.predict_documents(lines, 4) == ids_client.predict_documents(lines, 16)
  assert sum(map(len, text_client.predict(sentences))) > 50


def test_concurrent_text_requests_get_their_own_answers(served, conll_dev_path):
  server, _ = served
  sentences = [" ".join(s.words) for s in conll.read_conll(conll_dev_path)[:96]]
  client = GrpcNerClient(server.grpc, timeout=TIMEOUT_S)
  alone = client.predict(sentences, 1)
  clients = [GrpcNerClient(server.grpc, timeout=TIMEOUT_S) for _ in range(8)]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    together = list(
      pool.map(lambda i: clients[i % 8].predict([sentences[i]])[0], range(len(sentences)))
    )
  assert together == alone


def test_cli_json_scores_and_min_score(served):
  server, _ = served
  done = subprocess.run(
    [sys.executable, "clients/rest_client.py", "--server", server.rest, "--json", README_SENTENCE],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  entities = json.loads(done.stdout)["entities"]
  assert [(e["text"], e["type"], e["start"], e["end"]) for e in entities] == [
    ("EU", "ORG", 0, 2),
    ("German", "MISC", 11, 17),
  ]
  assert all(0 < e["score"] <= 1 for e in entities)
  done = subprocess.run(
    [sys.executable, "clients/grpc_client.py", "--server", server.grpc, "--min_score", "1.01", "x"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 2 and "--min_score must be between 0 and 1" in done.stderr
  threshold = min(e["score"] for e in entities) + 1e-9
  done = subprocess.run(
    [sys.executable, "clients/grpc_client.py", "--server", server.grpc]
    + ["--min_score", str(threshold), README_SENTENCE],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.count(" -> ") == 1
