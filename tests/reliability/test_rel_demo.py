"""The demo page's API under abandoned requests, a flood, and cross-site or rebound requests.

The page runs in-process (its own event loop in a thread, as `python -m bert_ner.demo` serves it)
over a
fake client whose tagging takes a fixed time, so queueing shows in seconds, not in model noise.
"""

import asyncio
import contextlib
import json
import socket
import threading
import time
from concurrent import futures

import requests

from bert_ner.demo import app as demo_app
from e2e_support import free_port
from rel_support import excerpt

TAG_SECONDS = 0.5
ABANDONED = 40
FLOOD = 30


class SlowClient:
  """Stands in for a NerClient: every tagging takes TAG_SECONDS; counts the taggings run."""

  server, model, fingerprint = "fake:0", "bert_ner", "0" * 16

  def __init__(self):
    self.runs = 0

  def check_fingerprint(self):
    pass

  def entity_types(self):
    return ["ORG"]

  def predict(self, lines):
    self.runs += 1
    time.sleep(TAG_SECONDS)
    return [[] for _ in lines]


@contextlib.contextmanager
def running_demo(client):
  """The demo app on a free loopback port, served by the demo's own runner: its URL."""
  loop = asyncio.new_event_loop()
  port = free_port()
  runner = demo_app.make_runner(demo_app.build_app(client, "grpc"))

  async def start():
    await runner.setup()
    await demo_app.web.TCPSite(runner, "127.0.0.1", port).start()

  thread = threading.Thread(target=loop.run_forever, daemon=True)
  thread.start()
  asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    loop.close()


def tag(url, headers=None, body=None):
  """POST /api/tag: (status, error message or '', seconds)."""
  data = body if body is not None else json.dumps({"text": "EU rejects German call"})
  started = time.monotonic()
  response = requests.post(
    url + "/api/tag",
    data=data,
    headers=headers or {"Content-Type": "application/json"},
    timeout=60,
  )
  seconds = time.monotonic() - started
  message = response.json().get("error", "") if response.content else ""
  return response.status_code, message, seconds


def send_and_close(url):
  """One whole /api/tag request written to a socket that is closed without reading the answer."""
  body = json.dumps({"text": "EU rejects German call"}).encode()
  host, port = url.removeprefix("http://").split(":")
  head = (
    f"POST /api/tag HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(body)}\r\n\r\n"
  ).encode()
  with socket.create_connection((host, int(port))) as s:
    s.sendall(head + body)


def test_abandoned_requests_are_not_tagged(report):
  client = SlowClient()
  with running_demo(client) as url:
    for _ in range(ABANDONED):
      send_and_close(url)
    time.sleep(0.2)  # the page has read them all
    status, message, seconds = tag(url)
    time.sleep(TAG_SECONDS * 2)
  ran = client.runs - 1
  ok = status == 200 and seconds < 4 * TAG_SECONDS and ran <= 2 * demo_app.TAG_WORKERS
  report.add(
    "load",
    f"demo: {ABANDONED} /api/tag requests closed right after sending, then one more "
    f"(each tagging {TAG_SECONDS} s, {demo_app.TAG_WORKERS} workers)",
    "demo",
    f"the abandoned ones still waiting are dropped: the next answers in < {4 * TAG_SECONDS} s",
    f"{status} in {seconds:.2f} s; {ran} of {ABANDONED} abandoned taggings ran {message}",
    ok,
  )
  assert ok, (status, seconds, ran)


def test_a_flood_beyond_the_queue_gets_503_at_once(report):
  with running_demo(SlowClient()) as url, futures.ThreadPoolExecutor(FLOOD) as pool:
    answers = list(pool.map(lambda _: tag(url), range(FLOOD)))
  busy = [seconds for status, _, seconds in answers if status == 503]
  served = sum(status == 200 for status, _, _ in answers)
  ok = (
    served == demo_app.MAX_PENDING_TAGS
    and len(busy) == FLOOD - demo_app.MAX_PENDING_TAGS
    and max(busy) < 2 * TAG_SECONDS
  )
  report.add(
    "load",
    f"demo: {FLOOD} concurrent /api/tag requests (each tagging {TAG_SECONDS} s, queue bound "
    f"{demo_app.MAX_PENDING_TAGS})",
    "demo",
    f"{demo_app.MAX_PENDING_TAGS} tagged, the other {FLOOD - demo_app.MAX_PENDING_TAGS} "
    "answered 503 with Retry-After at once",
    f"{served} tagged, {len(busy)} x 503"
    + (
      f" in at most {max(busy):.2f} s" if busy else f"; slowest {max(a[2] for a in answers):.1f} s"
    ),
    ok,
  )
  assert ok, answers


FOREIGN = [
  (
    "text/plain POST with a foreign Host and Origin (blind cross-site, DNS rebinding)",
    {
      "Host": "evil.example:8080",
      "Origin": "http://evil.example:8080",
      "Content-Type": "text/plain",
    },
    403,
  ),
  (
    "JSON POST with a rebound Host name",
    {"Host": "rebound.example:8080", "Content-Type": "application/json"},
    403,
  ),
  (
    "JSON POST with a loopback Host but a foreign Origin",
    {"Host": "127.0.0.1", "Origin": "https://evil.example", "Content-Type": "application/json"},
    403,
  ),
  ("text/plain POST from the page's own host", {"Content-Type": "text/plain"}, 415),
  (
    "form POST from the page's own host",
    {"Content-Type": "application/x-www-form-urlencoded"},
    415,
  ),
  ("JSON POST with Host localhost", {"Host": "localhost", "Content-Type": "application/json"}, 200),
  (
    "JSON POST from the page itself (Host and Origin 127.0.0.1)",
    {"Origin": "http://127.0.0.1:8080", "Content-Type": "application/json"},
    200,
  ),
]


def test_foreign_hosts_origins_and_content_types(report):
  with running_demo(SlowClient()) as url:
    for case, headers, want in FOREIGN:
      status, message, _ = tag(url, headers)
      ok = status == want
      report.add(
        "security",
        f"demo: {case}",
        "demo",
        f"{want}" + (" with one line saying why" if want != 200 else ""),
        f"{status} {excerpt(message, 100)}",
        ok,
      )
      assert ok, (case, status, message)
