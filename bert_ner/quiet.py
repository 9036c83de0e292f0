"""TensorFlow without its start-up noise: call `quiet_tensorflow()` before TensorFlow is imported.

On this CPU-only machine TF 2.21 greets every process with lines that read as failures but are
not (`make serve` printed 71 lines, 4 of them at E level):
- INFO notices while its libraries load, each twice (`oneDNN custom operations are on`, `Could not
  find cuda drivers`) under absl's `All log messages before absl::InitializeLog()` banner: written
  before TF_CPP_MIN_LOG_LEVEL is read (they print even at level 3, measured);
- INFO after that (`cpu_feature_guard` advice to rebuild TensorFlow, MLIR, TFRecordDataset):
  TF_CPP_MIN_LOG_LEVEL=1 drops them and keeps warnings and errors;
- at the first session, E-level `failed call to cuInit` (the GPU probe, on a machine without the
  NVIDIA driver) and E-level `oneDNN supports DT_BOOL only on platforms with AVX-512. Falling
  back to the default Eigen-based implementation` (oneDNN declines any non-float op it could have
  rewritten, here the CRF's masks and tag ids; Eigen runs them as it always did). Both are logged
  once per process, so a probe session triggers them while stderr is filtered;
- Python: deprecation notices for the TF1 API this project uses on purpose (sessions, the v1
  SavedModel loader, which is what gives the server a Session) and INFO `Restoring parameters`.
`BERT_NER_VERBOSE=1` (or an entry point's `--verbose`) keeps all of them.
"""

import contextlib
import ctypes
import logging
import os
import re
import sys
import tempfile

VERBOSE_ENV = "BERT_NER_VERBOSE"

# What the import and the probe session print that a healthy start need not show.
_START_UP_NOTICE = re.compile(
  r"I\d{4} |WARNING: All log messages before absl::InitializeLog\(\)"
  r"|E\d{4} .*oneDNN supports DT_\w+ only on platforms with AVX-512"
)
# The GPU probe's answer on a machine without the NVIDIA driver (libcuda): nothing to report.
_NO_DRIVER = "failed call to cuInit"


def add_verbose_flag(parser, logs="TensorFlow's start-up logs too"):
  """--verbose: print `logs` (TF's start-up logs: quiet_tensorflow(args.verbose) or, in a parent
  of TF processes, BERT_NER_VERBOSE=1 which they inherit)."""
  parser.add_argument("--verbose", action="store_true", help=f"{logs} (same as {VERBOSE_ENV}=1)")


def verbose():
  """True when BERT_NER_VERBOSE is set to anything but "" or "0"."""
  return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_tensorflow(verbose_flag=False):
  """Imports TensorFlow keeping only warnings that matter, unless verbose_flag or BERT_NER_VERBOSE.

  verbose_flag also sets BERT_NER_VERBOSE, so subprocesses (export, server) are verbose too.
  """
  if verbose_flag:
    os.environ[VERBOSE_ENV] = "1"
  if verbose():
    return
  # Read once by TF's C++ logging, at import: 1 drops INFO (cpu_feature_guard, MLIR pass,
  # TFRecordDataset buffer size) and keeps warnings and errors. A user's own setting wins.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  tf_logger = logging.getLogger("tensorflow")
  tf_logger.setLevel(logging.WARNING)  # no "Restoring parameters from ..." at INFO
  tf_logger.addFilter(_not_a_deprecation)
  logging.getLogger("absl").setLevel(logging.WARNING)
  if "tensorflow" in sys.modules:
    return
  with _stderr_filtered(_is_start_up_notice):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    _probe_session(tf)


def _probe_session(tf):
  """Runs an int32 transpose in a session: the GPU probe and oneDNN's fallback note, logged once."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf.compat.v1.placeholder(tf.int32, [None, None])  # not a constant: nothing folds it
    transposed = tf.transpose(ids)
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(transposed, {ids: [[0, 1]]})


def _not_a_deprecation(record):
  """Drops TF's deprecation notices: the TF1 API (sessions, the SavedModel v1 loader) is chosen."""
  return record.module != "deprecation"


def _is_start_up_notice(line):
  """One of the notices above, or cuInit failing where no NVIDIA driver is installed."""
  return bool(_START_UP_NOTICE.match(line)) or (_NO_DRIVER in line and not _nvidia_driver())


def _nvidia_driver():
  """True when the NVIDIA driver library loads: then a cuInit failure is a real problem."""
  try:
    ctypes.CDLL("libcuda.so.1")
  except OSError:
    return False
  return True


@contextlib.contextmanager
def _stderr_filtered(drop):
  """Diverts file descriptor 2 (C++ writes too) and replays the lines for which drop() is false."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode(errors="replace").splitlines(keepends=True)
      sys.stderr.write("".join(line for line in lines if not drop(line)))
      sys.stderr.flush()
