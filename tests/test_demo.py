"""The demo's pure parts: request validation, line splitting and offsets of tag_text."""

import json
import re

import pytest

from bert_ner.clients.common import ClientError
from bert_ner.demo import app
from bert_ner.demo.app import MAX_TEXT_CHARS, RequestError, parse_tag_request, split_lines, tag_text
from bert_ner.featurizer import Entity
from bert_ner.labels import entity_types, make_label_list


def body(value):
  """A JSON request body as the page sends it."""
  return json.dumps(value).encode("utf-8")


def rejection(raw):
  """(status, message) parse_tag_request raises for a body."""
  with pytest.raises(RequestError) as caught:
    parse_tag_request(raw)
  return caught.value.status, str(caught.value)


def test_accepts_text_up_to_the_limit_verbatim():
  head = "<script>alert(1)</script> EU\r\n😀"
  text = head + "x" * (MAX_TEXT_CHARS - len(head))
  assert parse_tag_request(body({"text": text})) == text


@pytest.mark.parametrize(
  "raw, status, words",
  [
    (b"", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b'{"text": "EU"', 400, "not JSON"),
    (body(["EU"]), 400, '"text" string'),
    (body({"texts": "EU"}), 400, '"text" string'),
    (body({"text": 3}), 400, '"text" string'),
    (body({"text": " \n\t "}), 400, "empty"),
    (b'{"text": "EU \\ud800"}', 400, "lone surrogate at character 3"),
    (
      body({"text": "x" * (MAX_TEXT_CHARS + 1)}),
      413,
      "10,001 characters; the demo tags at most 10,000",
    ),
  ],
)
def test_rejects_with_a_readable_message(raw, status, words):
  got_status, message = rejection(raw)
  assert got_status == status
  assert words in message and "\n" not in message


def test_a_longest_body_fits_the_body_limit():
  """Every text within MAX_TEXT_CHARS passes the byte limit, even fully escaped."""
  worst = json.dumps({"text": "😀" * MAX_TEXT_CHARS}).encode("ascii")  # \ud83d\ude00 each
  assert len(worst) <= app.MAX_BODY_BYTES


def test_split_lines_keeps_offsets_and_skips_blank_lines():
  text = "EU rejects\n\n  \nGerman call\r\nlast"
  assert list(split_lines(text)) == [(0, "EU rejects"), (15, "German call\r"), (28, "last")]
  assert [text[o : o + len(line)] for o, line in split_lines(text)] == [
    "EU rejects",
    "German call\r",
    "last",
  ]


class FakeClient:
  """Tags the first word of every line as ORG; records the lines it was given."""

  def __init__(self, failure=None, code=None):
    self.failure, self.code, self.lines = failure, code, None
    self.server, self.model, self.fingerprint = "h:1", "bert_ner", "aaaa"

  def check_fingerprint(self):
    if self.failure:
      raise ClientError(self.failure, self.code)

  def entity_types(self):
    return ["ORG"]

  def predict(self, lines):
    self.lines = lines
    return [
      [
        Entity(
          "ORG",
          line.split()[0],
          line.index(line.split()[0]),
          line.index(line.split()[0]) + len(line.split()[0]),
        )
      ]
      for line in lines
    ]


def test_tag_text_maps_line_offsets_into_the_whole_text():
  text = "EU rejects\n\n  German call"
  client = FakeClient()
  found = tag_text(client, text)
  assert client.lines == ["EU rejects", "  German call"]
  assert [(e.text, e.start, e.end) for e in found] == [("EU", 0, 2), ("German", 14, 20)]
  assert all(text[e.start : e.end] == e.text for e in found)


def test_tag_text_checks_the_fingerprint_before_tagging():
  client = FakeClient(failure="fingerprint mismatch (version skew)")
  with pytest.raises(ClientError, match="fingerprint mismatch"):
    tag_text(client, "EU rejects German call")
  assert client.lines is None


async def tag_answer(client, text="EU rejects German call"):
  """(status, JSON body) of POST /api/tag through the demo app tagging with `client`."""
  from aiohttp.test_utils import TestClient, TestServer

  async with TestClient(TestServer(app.build_app(client, "grpc"))) as http:
    response = await http.post("/api/tag", json={"text": text}, headers={"Host": "localhost"})
    return response.status, await response.json()


@pytest.mark.parametrize(
  "code, status",
  [
    ("NOT_FOUND", 404),
    ("DEADLINE_EXCEEDED", 504),
    ("INVALID_ARGUMENT", 400),
    ("UNAVAILABLE", 503),
    ("INTERNAL", 502),
    (None, 502),
  ],
)
def test_a_failed_tagging_answers_the_model_servers_status(code, status):
  """A wrong model name (404), a slow (504) or absent (503) server and a refused text (400)
  read apart on the page; anything else is a bad gateway (502). The message is the client's."""
  import asyncio

  client = FakeClient(failure="server said no", code=code)
  assert asyncio.run(tag_answer(client)) == (status, {"error": "cannot tag: server said no"})


def test_a_tagging_the_client_cannot_read_is_a_bad_gateway():
  import asyncio

  class Unreadable(FakeClient):
    def predict(self, lines):
      raise ValueError("label id out of range")

  assert asyncio.run(tag_answer(Unreadable())) == (
    502,
    {"error": "cannot tag: label id out of range"},
  )


def test_entity_types_inverts_make_label_list():
  assert entity_types(make_label_list(["PER", "LOC", "ORG", "MISC"])) == [
    "LOC",
    "MISC",
    "ORG",
    "PER",
  ]


def test_page_loads_nothing_from_elsewhere():
  """Only the demo's own files: no URL of another host, no CSS import or url() (works offline)."""
  html = (app.STATIC / "index.html").read_text(encoding="utf-8")
  assert re.findall(r'(?:src|href)="([^"]*)"', html) == ["/static/demo.css", "/static/demo.js"]
  for path in app.STATIC.iterdir():
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?:|//[\w-]+\.[\w.-]+/|url\(|@import", text), path.name


def test_info_shows_the_fingerprint_of_the_assets_in_use():
  """The client switches assets when the server reloads another version; the header follows."""
  import asyncio
  import types

  from aiohttp.test_utils import TestClient, TestServer

  client = types.SimpleNamespace(
    server="h:1", model="bert_ner", fingerprint="aaaa", entity_types=lambda: ["ORG"]
  )

  async def fingerprints():
    async with TestClient(TestServer(app.build_app(client, "grpc"))) as http:
      first = await (await http.get("/api/info")).json()
      client.fingerprint = "bbbb"
      second = await (await http.get("/api/info")).json()
    return first["fingerprint"], second["fingerprint"]

  assert asyncio.run(fingerprints()) == ("aaaa", "bbbb")


def test_a_wrapped_highlight_keeps_its_box_on_every_line():
  css = (app.STATIC / "demo.css").read_text(encoding="utf-8")
  rule = re.search(r"mark\.entity \{([^}]*)\}", css).group(1)
  assert re.search(r"(?<!-)box-decoration-break: clone;", rule)


@pytest.mark.parametrize(
  "headers, refused",
  [
    ({"Host": "127.0.0.1:8080"}, None),
    ({"Host": "localhost"}, None),
    ({"Host": "[::1]:8080", "Origin": "http://[::1]:8080"}, None),
    ({"Host": "LOCALHOST:8080", "Origin": "http://localhost:8080"}, None),
    ({}, "host None is not served here"),
    ({"Host": "evil.example"}, "host 'evil.example' is not served here"),
    ({"Host": "127.0.0.1.evil.example"}, "is not served here"),
    ({"Host": "a b"}, "is not served here"),
    ({"Host": "localhost", "Origin": "null"}, "cross-site request from 'null'"),
    ({"Host": "localhost", "Origin": "http://evil.example"}, "cross-site request"),
  ],
)
def test_only_the_allowed_hosts_and_origins_are_answered(headers, refused):
  problem = app.request_origin_error(headers, app.allowed_hosts("127.0.0.1"))
  assert problem == refused if refused is None else refused in problem


def test_allowed_hosts_add_the_listen_address_but_not_a_wildcard():
  assert app.allowed_hosts("0.0.0.0") == frozenset(app.DEFAULT_ALLOWED_HOSTS)
  assert app.allowed_hosts("::") == frozenset(app.DEFAULT_ALLOWED_HOSTS)
  assert "192.168.1.5" in app.allowed_hosts("192.168.1.5")
  assert "demo.lan" in app.allowed_hosts("0.0.0.0", ["Demo.lan"])
