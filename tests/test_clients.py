"""gRPC and REST clients: flags, assets, errors and fingerprints against an in-process fake TF
Serving, then both scripts end to end against `python -m bert_ner.server` serving a tiny real
export."""

import json
import operator
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from packaging.version import Version

from bert_ner.clients import common, grpc_client, rest_client
from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from e2e_support import free_port, make_checkpoint, run_export
from support.clients import (
  CALL_TIMEOUT,
  FINGERPRINT,
  SCRIPTS,
  SENTENCE,
  VOCAB,
  FakeServing,
  assert_one_line_error,
  run_script,
  write_assets,
)

CLASSES = {"grpc": grpc_client.GrpcNerClient, "rest": rest_client.RestNerClient}
SENTENCE_OUT = f"{SENTENCE}\n  EU -> ORG [0:2]\n  German -> MISC [11:17]\n"


# ---------------------------------------------------------------- without a server


FLAGS = operator.attrgetter(
  "texts", "server", "model", "signature", "timeout", "assets", "file", "json", "batch_size"
)


@pytest.mark.parametrize("transport,port", [("grpc", 8500), ("rest", 8501)])
def test_flags(transport, port):
  module = {"grpc": grpc_client, "rest": rest_client}[transport]
  parser = common.build_parser(module.__doc__, f"localhost:{port}")
  defaults = (
    ["a b"],
    f"localhost:{port}",
    "bert_ner",
    "serving_default",
    10.0,
    None,
    None,
    False,
    64,
  )
  assert FLAGS(parser.parse_args(["a b"])) == defaults
  args = parser.parse_args(
    "--server h:1 --model m --signature s --timeout 2.5 --assets dir --file - --json "
    "--batch_size 8".split()
  )
  assert FLAGS(args) == ([], "h:1", "m", "s", 2.5, "dir", "-", True, 8)


@pytest.mark.slow  # runs the client scripts
@pytest.mark.parametrize("transport", SCRIPTS)
def test_scripts_help_from_the_repo_root(transport):
  result = subprocess.run(
    [sys.executable, f"clients/{transport}_client.py", "--help"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=CALL_TIMEOUT,
  )
  assert result.returncode == 0 and result.stderr == ""
  for flag in (
    "--file",
    "--server",
    "--model",
    "--signature",
    "--timeout",
    "--assets",
    "--json",
    "--batch_size",
    f"localhost:{8500 if transport == 'grpc' else 8501}",
  ):
    assert flag in result.stdout


@pytest.mark.parametrize(
  "argv,error",
  [
    ([], "give sentences or --file"),
    (["x", "--batch_size", "0"], "must be positive"),
    (["x", "--timeout", "0"], "must be positive"),
  ],
)
def test_usage_errors(capsys, argv, error):
  with pytest.raises(SystemExit) as exit_info:
    common.main(grpc_client.GrpcNerClient, "doc", "localhost:8500", argv)
  assert exit_info.value.code == 2 and error in capsys.readouterr().err


def test_find_assets_takes_the_highest_version_of_the_first_root_that_has_one(
  tmp_path, monkeypatch
):
  monkeypatch.delenv("BERT_NER_ASSETS", raising=False)
  base = tmp_path / "b" / "models" / "bert_ner"
  for version in ("2", "10", "9"):
    (base / version / "assets.extra").mkdir(parents=True)
  (base / "11").mkdir()  # no assets.extra
  (base / ".tmp-12-1" / "assets.extra").mkdir(parents=True)
  assert common.find_assets([tmp_path / "a", tmp_path / "b"]) == base / "10" / "assets.extra"
  monkeypatch.chdir(tmp_path / "b")
  assert common.find_assets() == base / "10" / "assets.extra"
  monkeypatch.setenv("BERT_NER_ASSETS", str(tmp_path / "elsewhere"))
  assert common.find_assets([tmp_path / "b"]) == tmp_path / "elsewhere"


def test_find_assets_without_any_export(tmp_path, monkeypatch):
  monkeypatch.delenv("BERT_NER_ASSETS", raising=False)
  with pytest.raises(common.ClientError, match="missing assets.*pass assets=DIR or set") as e:
    common.find_assets([tmp_path])
  # A Python caller passed assets=; the scripts show their flag.
  assert "pass --assets DIR or set" in common.command_line_message(e.value)
  assert "--" not in str(e.value)


def test_command_line_message_names_flags_for_parameters_only():
  message = "server='a' mixes; pass the assets.extra as assets=DIR (see http://h/?x=assets=1)"
  assert common.command_line_message(common.ClientError(message)) == (
    "--server 'a' mixes; pass the assets.extra as --assets DIR (see http://h/?x=--assets 1)"
  )


def test_load_assets(tmp_path):
  featurizer, fingerprint = common.load_assets(write_assets(tmp_path / "ok"))
  assert fingerprint == FINGERPRINT and featurizer.max_seq_length == 16
  (tmp_path / "ok" / "label2id.json").unlink()
  with pytest.raises(common.ClientError, match="missing assets: .*label2id.json not found"):
    common.load_assets(tmp_path / "ok")
  write_assets(tmp_path / "nofp", fingerprint="")
  with pytest.raises(common.ClientError, match="no fingerprint"):
    common.load_assets(tmp_path / "nofp")


class StubClient(common.NerClient):
  """Serves canned output names per signature."""

  def __init__(self, assets, signatures, signature="result"):
    super().__init__("host:1", signature=signature, assets=assets)
    self.signatures = signatures

  def connect(self):
    """No transport: the answers are canned."""

  def output_names(self):
    return self.signatures


def served_as(fingerprint):
  """The output names of a model exported with that fingerprint."""
  return {"result": [f"ner_{fingerprint}/pred_label:0"]}


def test_clients_take_the_assets_of_the_served_version(tmp_path, monkeypatch):
  monkeypatch.delenv("BERT_NER_ASSETS", raising=False)
  monkeypatch.chdir(tmp_path)
  base = tmp_path / "models" / "bert_ner"
  old, new = "0123456789abcdef", "fedcba9876543210"
  write_assets(base / "1" / "assets.extra", fingerprint=old)
  write_assets(base / "2" / "assets.extra", fingerprint=new)
  (base / "0" / "assets.extra").mkdir(parents=True)  # incomplete: no ner_config.json
  # Version 2 is on disk but the server still serves 1 (it is loading 2): the client follows.
  client = StubClient(None, served_as(old))
  client.check_fingerprint()
  assert (client.fingerprint, client.assets) == (old, base / "1" / "assets.extra")
  client.signatures = served_as(new)  # the reload is done
  client.check_fingerprint()
  assert (client.fingerprint, client.assets) == (new, base / "2" / "assets.extra")
  client.signatures = served_as("aaaaaaaaaaaaaaaa")  # a version nobody has the assets of
  with pytest.raises(common.ClientError, match="fingerprint mismatch"):
    client.check_fingerprint()
  # Assets passed (or named by $BERT_NER_ASSETS) are the caller's choice: refused, not swapped.
  pinned = StubClient(base / "2" / "assets.extra", served_as(old))
  with pytest.raises(common.ClientError, match="have fedcba9876543210; .* as assets=DIR"):
    pinned.check_fingerprint()
  monkeypatch.setenv("BERT_NER_ASSETS", str(base / "2" / "assets.extra"))
  with pytest.raises(common.ClientError, match="fingerprint mismatch"):
    StubClient(None, served_as(old)).check_fingerprint()


@pytest.mark.parametrize(
  "call",
  [
    lambda c: c.predict("EU rejects German call"),
    lambda c: c.predict_documents("EU rejects German call"),
    lambda c: c.predict_documents(["EU rejects", "German call"]),
  ],
)
def test_a_bare_str_is_a_type_error_not_one_sentence_per_character(tmp_path, call):
  client = StubClient(write_assets(tmp_path), served_as(FINGERPRINT))
  with pytest.raises(TypeError, match=r"takes a list of strings, not a str: wrap it as \[text\]"):
    call(client)


def test_crlf_files_give_lines_without_a_carriage_return(tmp_path):
  path = tmp_path / "crlf.txt"
  path.write_bytes(b"EU rejects\r\n\r\nGerman call\r\nlast\r")
  args = common.build_parser(None, "h:1").parse_args(["--file", str(path)])
  assert common.read_texts(args) == ["EU rejects", "", "German call", "last"]
  assert json.loads(common.format_result("EU rejects", [], True))["text"] == "EU rejects"


@pytest.mark.parametrize(
  "signature,signatures,error,code",
  [
    ("result", {"result": [f"ner_{FINGERPRINT}/pred_label:0"]}, None, None),
    ("result", {"result": ["x:0", f"ner_{FINGERPRINT}/pred_label:0"], "other": []}, None, None),
    (
      "result",
      {"result": ["ner_fedcba9876543210/pred_label:0"]},
      "fingerprint mismatch .*server has fedcba9876543210.* have 0123456789abcdef",
      None,
    ),
    (
      "nope",
      {"result": [f"ner_{FINGERPRINT}/pred_label:0"], "serving_default": []},
      "signature 'nope' not found in model 'bert_ner' \\(has: result, serving_default\\)",
      "NOT_FOUND",
    ),
    ("result", {"result": ["pred_label:0"]}, "no ner_<fingerprint> output", None),
  ],
)
def test_check_fingerprint(tmp_path, signature, signatures, error, code):
  client = StubClient(write_assets(tmp_path), signatures, signature)
  if error is None:
    client.check_fingerprint()
  else:
    with pytest.raises(common.ClientError, match=error) as caught:
      client.check_fingerprint()
    assert caught.value.code == code


@pytest.mark.parametrize(
  "code,expected",
  [
    ("UNAVAILABLE", "server unreachable at host:1: a b"),
    ("DEADLINE_EXCEEDED", "timeout: no answer from host:1 within 10s: a b"),
    ("NOT_FOUND", "not found on host:1 (model 'bert_ner', signature 'result'): a b"),
    ("INVALID_ARGUMENT", "server rejected the request (INVALID_ARGUMENT): a b"),
    ("INTERNAL", "server error INTERNAL: a b"),
  ],
)
def test_error_messages_are_one_line_and_keep_the_code(tmp_path, code, expected):
  client = StubClient(write_assets(tmp_path), {})
  error = client.error(code, " a\n  b\n")
  assert (str(error), error.code) == (expected, code)


@pytest.mark.slow  # runs a subprocess
# The demo too: it runs where only the clients' dependencies and aiohttp are installed.
@pytest.mark.parametrize(
  "modules",
  ["bert_ner.clients.grpc_client, bert_ner.clients.rest_client", "bert_ner.demo.__main__"],
)
def test_client_modules_do_not_import_tensorflow(modules):
  code = (
    f"import sys, {modules}; "
    "print(sorted({m.split('.')[0] for m in sys.modules} & "
    "{'tensorflow', 'tensorflow_serving', 'keras', 'tf_keras', 'jax', 'torch'}))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    timeout=CALL_TIMEOUT,
    check=True,
  )
  assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- against a fake TF Serving


@pytest.fixture(scope="module")
def fake_assets(tmp_path_factory):
  return write_assets(tmp_path_factory.mktemp("fake") / "assets.extra")


@pytest.fixture(scope="module")
def fake_server():
  server = FakeServing(VOCAB)
  yield server
  server.close()


@pytest.fixture
def fake(fake_server):
  fake_server.delay, fake_server.shapes, fake_server.metadata_calls = 0.0, [], 0
  return fake_server


@pytest.fixture(params=["grpc", "rest"])
def transport(request):
  return request.param


def test_predict_batches_and_pads_to_the_longest_row(fake, fake_assets, transport):
  client = CLASSES[transport](fake.address(transport), assets=fake_assets)
  client.check_fingerprint()
  result = client.predict([SENTENCE, "", "british lamb", "EU ."], batch_size=2)
  assert [[(e.type, e.text, e.start, e.end) for e in entities] for entities in result] == [
    [("ORG", "EU", 0, 2), ("MISC", "German", 11, 17)],
    [],
    [("MISC", "british", 0, 7)],
    [("ORG", "EU", 0, 2)],
  ]
  assert fake.shapes == [(2, 4), (1, 6)]  # shortest rows first, each batch padded to its longest


def test_long_input_goes_through_windowing(fake, fake_assets, transport):
  client = CLASSES[transport](fake.address(transport), assets=fake_assets)
  text = " ".join(["EU"] + ["call to boycott lamb ."] * 8 + ["German"])
  entities = client.predict([text])[0]
  assert [(e.type, e.start, e.end) for e in entities] == [
    ("ORG", 0, 2),
    ("MISC", len(text) - 6, len(text)),
  ]
  assert len(fake.shapes) == 1 and fake.shapes[0][0] > 2 and fake.shapes[0][1] == 16


@pytest.mark.parametrize(
  "model,signature,error,code",
  [
    ("nope", "result", "not found on .*model 'nope'.*Servable not found", "NOT_FOUND"),
    (
      "bert_ner",
      "nope",
      r"server rejected the request \(INVALID_ARGUMENT\): Serving signature",
      "INVALID_ARGUMENT",
    ),
  ],
)
def test_server_side_errors(fake, fake_assets, transport, model, signature, error, code):
  client = CLASSES[transport](fake.address(transport), model, signature, assets=fake_assets)
  with pytest.raises(common.ClientError, match=error) as caught:
    client.featurizer.predict_texts([SENTENCE], client.run)
  assert caught.value.code == code


def test_predict_checks_the_fingerprint_once_per_client(fake, fake_assets, tmp_path, transport):
  # README: the client refuses a mismatch; the Python API as much as the scripts.
  skewed = CLASSES[transport](
    fake.address(transport), assets=write_assets(tmp_path, fingerprint="fedcba9876543210")
  )
  with pytest.raises(common.ClientError, match="fingerprint mismatch .*server has 0123456789abc"):
    skewed.predict([SENTENCE])
  assert fake.shapes == []  # refused before any Predict
  client = CLASSES[transport](fake.address(transport), assets=fake_assets)
  for _ in range(3):
    assert [e.text for e in client.predict([SENTENCE])[0]] == ["EU", "German"]
  assert fake.metadata_calls == 2 and len(fake.shapes) == 3


def test_a_client_is_a_context_manager_that_closes_its_transport(fake, fake_assets, transport):
  with CLASSES[transport](fake.address(transport), assets=fake_assets) as client:
    assert [e.text for e in client.predict([SENTENCE])[0]] == ["EU", "German"]
  if transport == "grpc":
    with pytest.raises(ValueError, match="closed channel"):
      client.check_fingerprint()
  else:
    assert not client.session.adapters["http://"].poolmanager.pools


def test_timeout(fake, fake_assets, transport):
  fake.delay = 5.0
  client = CLASSES[transport](fake.address(transport), timeout=0.3, assets=fake_assets)
  started = time.monotonic()
  with pytest.raises(common.ClientError, match="timeout: no answer from .* within 0.3s") as caught:
    client.check_fingerprint()
  assert time.monotonic() - started < 3.0
  assert caught.value.code == "DEADLINE_EXCEEDED"


@pytest.mark.slow  # runs the client scripts
def test_scripts_tag_sentences_files_and_stdin(fake, fake_assets, tmp_path):
  lines = [SENTENCE, "", "boycott british lamb"]
  (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
  outputs = {}
  for transport in SCRIPTS:
    flags = ["--server", fake.address(transport), "--assets", fake_assets]
    text = run_script(transport, SENTENCE, *flags, cwd=tmp_path)
    assert (text.returncode, text.stdout, text.stderr) == (0, SENTENCE_OUT, "")
    as_json = run_script(transport, "--file", tmp_path / "in.txt", "--json", *flags)
    stdin = run_script(transport, "--file", "-", "--json", *flags, stdin="\n".join(lines))
    assert as_json.returncode == stdin.returncode == 0 and as_json.stdout == stdin.stdout
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["text"] for r in records] == lines
    assert records[2]["entities"] == [{"type": "MISC", "text": "british", "start": 8, "end": 15}]
    # --document: the lines go as one document; this token-wise fake tags them alike.
    document = run_script(transport, "--file", tmp_path / "in.txt", "--json", "--document", *flags)
    assert (document.returncode, document.stdout) == (0, as_json.stdout), document.stderr
    outputs[transport] = text.stdout + as_json.stdout
  assert outputs["grpc"] == outputs["rest"]


@pytest.mark.slow  # runs the client scripts
def test_scripts_fail_with_one_line(fake, fake_assets, tmp_path, transport):
  flags = ["--assets", fake_assets]
  assert_one_line_error(
    run_script(transport, SENTENCE, "--server", f"127.0.0.1:{free_port()}", *flags),
    "server unreachable at 127.0.0.1:",
  )
  address = ["--server", fake.address(transport)]
  assert_one_line_error(
    run_script(transport, SENTENCE, *address, *flags, "--model", "nope"),
    "not found on .*model 'nope'",
  )
  assert_one_line_error(
    run_script(transport, SENTENCE, *address, *flags, "--signature", "nope"),
    "signature 'nope' not found in model 'bert_ner'",
  )
  skewed = write_assets(tmp_path / "skewed", fingerprint="fedcba9876543210")
  assert_one_line_error(
    run_script(transport, SENTENCE, *address, "--assets", skewed), "fingerprint mismatch"
  )
  assert_one_line_error(
    run_script(
      transport,
      SENTENCE,
      *address,
      cwd=tmp_path,
      env=dict(os.environ, BERT_NER_ASSETS=str(tmp_path / "no")),
    ),
    "missing assets: .*vocab.txt not found",
  )
  assert_one_line_error(
    run_script(transport, "--file", tmp_path / "absent.txt", *address, *flags), "cannot read"
  )


# ---------------------------------------------------------------- end to end: export + server

LONG = " ".join(["Germany 's representative to the European Union said on Wednesday"] * 4)
E2E_SENTENCES = [SENTENCE, "Peter Blackburn", "BRUSSELS 1996-08-22", LONG]  # LONG: 2+ windows


@pytest.fixture(scope="module")
def served(tiny_bert_dir, tmp_path_factory):
  """(workdir, grpc address, rest address): `python -m bert_ner.server` on free loopback ports
  serving a tiny export in workdir/models/bert_ner/1."""
  work = tmp_path_factory.mktemp("served")
  base = work / "models" / "bert_ner"
  ckpt = make_checkpoint(tiny_bert_dir, work / "ckpt")
  export = run_export(ckpt, base)
  assert export.returncode == 0, export.stderr[-2000:]
  with ServerProcess(base, work / "server.log") as server:
    yield work, server.grpc, server.rest


@pytest.mark.slow  # exports and starts the server
def test_e2e_grpc_and_rest_scripts_agree(served):
  work, grpc_address, rest_address = served
  (work / "in.txt").write_text("\n".join(E2E_SENTENCES) + "\n")
  outputs = {}
  for transport, address in (("grpc", grpc_address), ("rest", rest_address)):
    text = run_script(transport, *E2E_SENTENCES, "--server", address, cwd=work)
    as_json = run_script(
      transport,
      "--file",
      work / "in.txt",
      "--json",
      "--server",
      address,
      "--batch_size",
      "3",
      cwd=work,
    )
    assert text.returncode == as_json.returncode == 0, text.stderr + as_json.stderr
    assert text.stderr == as_json.stderr == ""
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["text"] for r in records] == E2E_SENTENCES
    for record in records:
      for entity in record["entities"]:
        assert record["text"][entity["start"] : entity["end"]] == entity["text"]
        assert entity["type"] in {"LOC", "MISC", "ORG", "PER"}
    assert text.stdout.splitlines()[0] == SENTENCE
    outputs[transport] = text.stdout, as_json.stdout
  assert outputs["grpc"] == outputs["rest"]


@pytest.mark.slow  # exports and starts the server
def test_e2e_scripts_fail_with_one_line(served, transport):
  work, *addresses = served
  address = dict(zip(SCRIPTS, addresses))[transport]
  assert_one_line_error(
    run_script(transport, SENTENCE, "--server", f"127.0.0.1:{free_port()}", cwd=work),
    "server unreachable",
  )
  assert_one_line_error(
    run_script(transport, SENTENCE, "--server", address, "--model", "nope", cwd=work),
    "not found on .*model 'nope'",
  )
  assert_one_line_error(
    run_script(transport, SENTENCE, "--server", address, "--signature", "nope", cwd=work),
    "signature 'nope' not found",
  )
  skewed = work / f"skewed-{transport}"
  if not skewed.exists():
    shutil.copytree(work / "models" / "bert_ner" / "1" / "assets.extra", skewed)
    config = json.loads((skewed / "ner_config.json").read_text())
    config["fingerprint"] = "f" * 16
    (skewed / "ner_config.json").write_text(json.dumps(config))
  assert_one_line_error(
    run_script(
      transport,
      SENTENCE,
      "--server",
      address,
      "--signature",
      "result",
      "--assets",
      skewed,
      cwd=work,
    ),
    "fingerprint mismatch",
  )


@pytest.mark.slow  # exports and starts the server
def test_e2e_server_side_invalid_argument(served, transport):
  work, *addresses = served
  client = CLASSES[transport](
    dict(zip(SCRIPTS, addresses))[transport],
    signature="result",
    assets=work / "models" / "bert_ner" / "1" / "assets.extra",
  )
  with pytest.raises(common.ClientError, match=r"\(INVALID_ARGUMENT\): .*outside the vocabulary"):
    client.run(np.array([[101, 10**6, 102]], np.int32), np.ones((1, 3), np.int32))


# ---------------------------------------------------------------- the wheel, installed elsewhere


def build_wheel(out):
  """Builds the distribution's wheel from a copy of what it packages (the clone stays clean)."""
  src = out / "src"
  shutil.copytree(
    REPO_ROOT / "bert_ner", src / "bert_ner", ignore=shutil.ignore_patterns("__pycache__")
  )
  shutil.copy(REPO_ROOT / "pyproject.toml", src)
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "-w",
      out,
      src,
    ],
    check=True,
    capture_output=True,
  )
  (wheel,) = out.glob("*.whl")
  return wheel


def wheel_requirements(wheel):
  """{name: specifier} of the wheel's unconditional Requires-Dist (the client install's)."""
  with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
  found = {}
  for line in lines:
    if line.startswith("Requires-Dist:") and ";" not in line:
      name, spec = re.fullmatch(r"Requires-Dist: ([A-Za-z0-9_.-]+)\s*\(?([^)]*)\)?", line).groups()
      found[name.lower()] = spec.replace(" ", "")
  return found


def client_venv(where, wheel, constraints=()):
  """A scratch venv with the wheel's client install (and `constraints`, as `name==version`)."""
  subprocess.run([sys.executable, "-m", "venv", where], check=True)
  pip = [where / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
  (where / "constraints.txt").write_text("".join(f"{c}\n" for c in constraints))
  subprocess.run([*pip, "-c", where / "constraints.txt", f"{wheel}[client]"], check=True)
  return where / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow  # builds a wheel
def test_the_wheel_holds_one_package_console_scripts_and_dependency_ranges(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
  assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"bert_ner"}
  assert "bert-ner-grpc = bert_ner.clients.grpc_client:main" in entry_points
  assert "bert-ner-rest = bert_ner.clients.rest_client:main" in entry_points
  requirements = wheel_requirements(wheel)
  assert set(requirements) == {"numpy", "tokenizers", "grpcio", "protobuf", "requests"}
  lock = (REPO_ROOT / "requirements.lock").read_text().lower().splitlines()
  pinned = dict(line.split("==") for line in lock if "==" in line)
  for name, spec in requirements.items():
    # From a floor the wheel tests (below) up to the next major of the version the repo pins.
    floor = Version(re.search(r">=([0-9.]+)", spec).group(1))
    ceiling = Version(re.search(r"<([0-9.]+)", spec).group(1))
    assert floor <= Version(pinned[name]) < ceiling == Version(str(Version(pinned[name]).major + 1))


@pytest.mark.slow  # builds a wheel, installs it twice from the package index, exports, serves
@pytest.mark.parametrize("versions", ["newest", "floors"])
def test_the_installed_console_scripts_tag_text_like_the_clone_s_clients(
  versions, wheel, served, tmp_path
):
  floors = [
    f"{n}=={re.search(r'>=([0-9.]+)', s).group(1)}" for n, s in wheel_requirements(wheel).items()
  ]
  bin_dir = client_venv(tmp_path / "venv", wheel, floors if versions == "floors" else ())
  listed = subprocess.run(
    [bin_dir / "python", "-m", "pip", "show", "-f", "bert-ner-serving"],
    capture_output=True,
    text=True,
  ).stdout
  files = listed.split("Files:")[1].split()
  assert {f.split("/")[0] for f in files if not f.startswith(("..", "bert_ner_serving-"))} == {
    "bert_ner"
  }
  installed = subprocess.run(
    [bin_dir / "python", "-m", "pip", "freeze"], capture_output=True, text=True
  )
  assert "tensorflow" not in installed.stdout.lower()
  if versions == "floors":
    pins = dict(line.lower().split("==") for line in installed.stdout.splitlines() if "==" in line)
    for floor in floors:
      name, version = floor.split("==")
      assert Version(pins[name]) == Version(version), (floor, pins.get(name))
  work, grpc_address, rest_address = served
  env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
  for command, address in (("bert-ner-grpc", grpc_address), ("bert-ner-rest", rest_address)):
    transport = command.rsplit("-", 1)[1]
    ours = run_script(transport, *E2E_SENTENCES, "--json", "--server", address, cwd=work)
    theirs = subprocess.run(
      [bin_dir / command, *E2E_SENTENCES, "--json", "--server", address],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert theirs.returncode == ours.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout
    assert [json.loads(line)["text"] for line in theirs.stdout.splitlines()] == E2E_SENTENCES
