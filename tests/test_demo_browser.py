"""The demo page in a real browser: Debian's chromium, headless, driven by selenium through the
system chromedriver (nothing is downloaded). The shipped model is exported and served by
`python -m bert_ner.server` on free loopback ports, `python -m bert_ner.demo` runs beside it on
another one.

Screenshots and the measured page-load and tag round-trip times go to build/demo/; with
WRITE_DEMO_SCREENSHOT=1 (`make demo-screenshot`) the README's docs/demo.png is replaced too, so a
plain `make test` leaves the work tree clean.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import pytest
import requests

from bert_ner import model_base
from bert_ner.paths import REPO_ROOT
from e2e_support import free_port, served_shipped_model

pytestmark = pytest.mark.slow  # needs chromium and starts the demo and a server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--window-size=1000,720",
]
BUILD = REPO_ROOT / "build" / "demo"
README_SHOT = REPO_ROOT / "docs" / "demo.png"
SENTENCE = "EU rejects German call"
MARKUP = (
  '<script>window.injected = 1</script><img src="x" onerror="alert(1)"> EU rejects German call'
)
DEMO_READY = re.compile(r"demo: (http://\S+)")
DEMO_READY_TIMEOUT_S = 120
WAIT_S = 60
TAG_REPEATS = 5
# The page's own round trip and the labels inside the highlights, read in the page.
HIGHLIGHTS_JS = """
  const marks = Array.from(document.querySelectorAll('#highlighted mark.entity'));
  const plain = document.getElementById('highlighted').cloneNode(true);
  plain.querySelectorAll('.entity-label').forEach((label) => label.remove());
  return {marks: marks.map((m) => [m.querySelector('.entity-text').textContent, m.dataset.type]),
          elements: document.querySelectorAll('#highlighted *').length,
          text: plain.textContent};
"""
LOAD_TIMES_JS = """
  const navigation = performance.getEntriesByType('navigation')[0];
  const info = performance.getEntriesByName(new URL('/api/info', location).href)[0];
  return {load_event_ms: navigation.loadEventEnd, info_answered_ms: info.responseEnd};
"""


class DemoProcess:
  """`python -m bert_ner.demo` on a free loopback port; `url` once it printed its ready line."""

  def __init__(self, log_path, *flags):
    self.log_path = log_path
    with open(log_path, "w") as out:
      self.proc = subprocess.Popen(
        [sys.executable, "-m", "bert_ner.demo", "--port", "0", *flags],
        cwd=REPO_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
      )
    deadline = time.monotonic() + DEMO_READY_TIMEOUT_S
    while not (ready := DEMO_READY.search(self.log())):
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise RuntimeError(f"demo not ready: {self.log()[-2000:]}")
      time.sleep(0.1)
    self.url = ready.group(1)

  def log(self):
    """What the demo printed so far."""
    return self.log_path.read_text(errors="replace")

  def stop(self):
    """SIGTERM (SIGKILL after 30 s); the exit status."""
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    return self.proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """models/default exported into a temp model base, served on free loopback ports."""
  with served_shipped_model(tmp_path_factory.mktemp("demo") / "bert_ner") as served:
    yield served


@pytest.fixture(scope="module")
def start_demo(tmp_path_factory):
  """Starts `python -m bert_ner.demo` with flags; every demo started stops (exit 0) at the end."""
  logs, demos = tmp_path_factory.mktemp("demo_logs"), []

  def start(*flags):
    demos.append(DemoProcess(logs / f"demo{len(demos)}.log", *flags))
    return demos[-1]

  yield start
  assert [demo.stop() for demo in demos] == [0] * len(demos)


@pytest.fixture(scope="module")
def demos(served, start_demo):
  """A demo per transport, both talking to the served shipped model."""
  server, assets = served
  return {
    "grpc": start_demo("--transport", "grpc", "--server", server.grpc, "--assets", assets),
    "rest": start_demo("--transport", "rest", "--server", server.rest, "--assets", assets),
  }


@pytest.fixture(scope="module")
def timings():
  """Measured times, written to build/demo/timings.json at the end of the module."""
  measured = {}
  yield measured
  BUILD.mkdir(parents=True, exist_ok=True)
  (BUILD / "timings.json").write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  """Headless chromium under selenium, with a fresh profile; skips where none is installed."""
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
      "no chromium/chromedriver on PATH: install Debian's `chromium chromium-driver` "
      "as root (.ci/run does)"
    )
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  # An explicit driver path: selenium does not run Selenium Manager, which would download one.
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  yield driver
  driver.quit()


def open_page(browser, url):
  """Loads the page and waits until it has its model info; Navigation Timing figures in ms."""
  from selenium.webdriver.support.ui import WebDriverWait

  browser.get(url)
  WebDriverWait(browser, WAIT_S).until(
    lambda d: d.execute_script("return document.body.dataset.ready === 'true'")
  )
  return browser.execute_script(LOAD_TIMES_JS)


def click_tag(browser):
  """Clicks Tag and waits for a result or a message; (round trip ms or None, message or None)."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  browser.find_element(By.ID, "tag").click()
  WebDriverWait(browser, WAIT_S).until(
    lambda d: d.execute_script(
      "return 'roundTripMs' in document.getElementById('timing').dataset "
      "|| !document.getElementById('message').hidden"
    )
  )
  message = browser.find_element(By.ID, "message")
  round_trip = browser.find_element(By.ID, "timing").get_attribute("data-round-trip-ms")
  return (
    float(round_trip) if round_trip else None,
    message.text if message.is_displayed() else None,
  )


def type_text(browser, text):
  """Types text into the empty text box, key by key."""
  from selenium.webdriver.common.by import By

  box = browser.find_element(By.ID, "text")
  box.clear()
  box.send_keys(text)


def shown_json(browser):
  """The raw JSON view's content, read by switching to it and back."""
  from selenium.webdriver.common.by import By

  toggle = browser.find_element(By.ID, "toggle-json")
  toggle.click()
  assert browser.find_element(By.ID, "json").is_displayed()
  assert not browser.find_element(By.ID, "view").is_displayed()
  shown = json.loads(browser.find_element(By.ID, "json").text)
  toggle.click()
  assert browser.find_element(By.ID, "view").is_displayed()
  return shown


def screenshot(browser, name):
  """Saves the window to build/demo/<name>.png; returns the path."""
  BUILD.mkdir(parents=True, exist_ok=True)
  path = BUILD / f"{name}.png"
  assert browser.save_screenshot(str(path))
  return path


def page_errors(browser):
  """SEVERE console entries (script errors, CSP violations) other than the absent favicon."""
  return [
    e["message"]
    for e in browser.get_log("browser")
    if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]
  ]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_readme_sentence_highlights_eu_and_german(browser, demos, timings, transport):
  from selenium.webdriver.common.by import By

  started = time.perf_counter()
  load = open_page(browser, demos[transport].url)
  load["ready_wall_ms"] = round((time.perf_counter() - started) * 1000, 1)
  type_text(browser, SENTENCE)
  round_trips, tag_ms = [], []
  for _ in range(TAG_REPEATS):
    round_trip, message = click_tag(browser)
    assert message is None
    round_trips.append(round_trip)
    tag_ms.append(
      json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))["tag_ms"]
    )
  shown = browser.execute_script(HIGHLIGHTS_JS)
  assert shown["marks"] == [["EU", "ORG"], ["German", "MISC"]]
  assert shown["elements"] == 3 * 2  # mark, its text and its label per entity: nothing else
  assert shown["text"] == SENTENCE
  rows = [
    [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    for row in browser.find_elements(By.CSS_SELECTOR, "#entities tbody tr")
  ]
  assert rows == [["EU", "ORG", "0", "2"], ["German", "MISC", "11", "17"]]
  assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")] == [
    "LOC",
    "MISC",
    "ORG",
    "PER",
  ]
  entities = shown_json(browser)["entities"]
  assert [{k: e[k] for k in ("type", "text", "start", "end")} for e in entities] == [
    {"type": "ORG", "text": "EU", "start": 0, "end": 2},
    {"type": "MISC", "text": "German", "start": 11, "end": 17},
  ]
  assert all(0.9 < e["score"] <= 1 for e in entities)  # the text signature's scores
  assert re.fullmatch(
    r"round trip \d+ ms \(tagging \d+ ms\)", browser.find_element(By.ID, "timing").text
  )
  assert page_errors(browser) == []
  path = screenshot(browser, f"readme-sentence-{transport}")
  if transport == "grpc" and os.environ.get("WRITE_DEMO_SCREENSHOT") == "1":
    shutil.copyfile(path, README_SHOT)
  timings[transport] = {
    **load,
    "round_trip_ms": round_trips,
    "tag_ms": tag_ms,
    "round_trip_median_ms": statistics.median(round_trips),
    "tag_median_ms": statistics.median(tag_ms),
  }


def test_markup_in_the_input_shows_as_text(browser, demos):
  from selenium.common.exceptions import NoAlertPresentException
  from selenium.webdriver.common.by import By

  open_page(browser, demos["grpc"].url)
  type_text(browser, MARKUP)
  _, message = click_tag(browser)
  assert message is None
  with pytest.raises(NoAlertPresentException):
    _ = browser.switch_to.alert.text  # reading it raises when no alert is open
  shown = browser.execute_script(HIGHLIGHTS_JS)
  assert shown["text"] == MARKUP
  assert shown["elements"] == 3 * len(shown["marks"])
  assert browser.execute_script(
    "return [window.injected, document.images.length, document.scripts.length]"
  ) == [None, 0, 1]
  assert MARKUP.split(">")[0] + ">" in browser.find_element(By.ID, "highlighted").text
  assert shown_json(browser)["text"] == MARKUP
  assert page_errors(browser) == []
  screenshot(browser, "markup-as-text")


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_model_server_down_shows_the_clients_message(browser, served, start_demo, transport):
  from selenium.webdriver.common.by import By

  address = f"127.0.0.1:{free_port()}"
  demo = start_demo("--transport", transport, "--server", address, "--assets", served[1])
  assert "model server not usable yet" in demo.log()
  open_page(browser, demo.url)
  type_text(browser, SENTENCE)
  round_trip, message = click_tag(browser)
  assert round_trip is None
  assert message.startswith(f"cannot tag: server unreachable at {address}")
  assert not browser.find_element(By.ID, "result").is_displayed()
  screenshot(browser, f"server-down-{transport}")


def test_assets_of_another_model_show_the_mismatch(browser, served, start_demo, tmp_path):
  server, assets = served
  other = shutil.copytree(assets, tmp_path / model_base.ASSETS_DIR)
  config = json.loads((other / "ner_config.json").read_text(encoding="utf-8"))
  (other / "ner_config.json").write_text(
    json.dumps({**config, "fingerprint": "0" * 16}), encoding="utf-8"
  )
  demo = start_demo(
    "--transport", "rest", "--server", server.rest, "--signature", "result", "--assets", other
  )
  open_page(browser, demo.url)
  type_text(browser, SENTENCE)
  _, message = click_tag(browser)
  assert "fingerprint mismatch (version skew)" in message
  assert f"assets {other} have {'0' * 16}" in message
  screenshot(browser, "assets-mismatch")


def test_too_long_text_shows_the_limit(browser, demos):
  from selenium.webdriver.common.by import By

  open_page(browser, demos["grpc"].url)
  browser.execute_script(
    "const box = document.getElementById('text');"
    "box.value = 'EU '.repeat(3334);"
    "box.dispatchEvent(new Event('input'));"
  )
  count = browser.find_element(By.ID, "count")
  assert count.text == "10,002 / 10,000 characters" and "over" in count.get_attribute("class")
  _, message = click_tag(browser)
  assert message == (
    "the text has 10,002 characters; the demo tags at most 10,000 (use the "
    "clients' --file for longer texts)"
  )
  screenshot(browser, "too-long")


def test_api_answers_bad_requests_in_json_with_the_security_headers(demos):
  url = demos["rest"].url
  too_big = requests.post(
    url + "api/tag",
    data=b"x" * 200_000,
    headers={"Content-Type": "application/json"},
    timeout=30,
  )
  assert too_big.status_code == 413
  assert too_big.json() == {
    "error": "request body is over 121,024 bytes, the most the demo accepts"
  }
  assert "script-src 'self'" in too_big.headers["Content-Security-Policy"]
  page = requests.get(url, timeout=30)
  assert page.status_code == 200 and page.headers["X-Content-Type-Options"] == "nosniff"
  assert page.headers["Cache-Control"] == "no-cache"
  assert requests.get(url + "static/%2e%2e/app.py", timeout=30).status_code == 404
