"""A version whose files never finish reading (saved_model.pb a FIFO): the manager moves on to
later versions and SIGTERM ends the server within its grace period."""

import os
import shutil
import time

from rel_support import excerpt, polling_server, served_version

POLL_S = 0.5
NEXT_VERSION_LIMIT_S = 30
STOP_LIMIT_S = 10  # SHUTDOWN_GRACE_S (5 s) plus start-up of the interpreter's exit


def test_fifo_saved_model_does_not_hold_the_manager(env, report, tmp_path):
  base, server = polling_server(env, tmp_path, POLL_S)
  try:
    shutil.copytree(env.base / "1", base / "2", ignore=shutil.ignore_patterns("saved_model.pb"))
    os.mkfifo(base / "2" / "saved_model.pb")  # a reader blocks until a writer opens it
    time.sleep(4 * POLL_S)
    shutil.copytree(env.base / "1", base / "3")
    started = time.monotonic()
    while served_version(server) != 3 and time.monotonic() - started < NEXT_VERSION_LIMIT_S:
      time.sleep(POLL_S)
    next_s = time.monotonic() - started
    version = served_version(server)
  finally:
    started = time.monotonic()
    status = server.stop(timeout=STOP_LIMIT_S)
    stop_s = time.monotonic() - started
  skipped = [line for line in server.log().splitlines() if "version 2" in line]
  ok = version == 3 and status is not None and stop_s < STOP_LIMIT_S
  report.add(
    "faults",
    "version 2's saved_model.pb is a FIFO nobody writes, then version 3 is copied in",
    "server",
    f"version 2 skipped, version 3 served within {NEXT_VERSION_LIMIT_S} s; SIGTERM ends the "
    f"server within {STOP_LIMIT_S} s",
    f"serving version {version} {next_s:.1f} s after version 3 appeared; "
    f"{excerpt(skipped[-1] if skipped else 'version 2 never logged', 100)}; SIGTERM: "
    + (
      f"exit {status} in {stop_s:.1f} s" if status is not None else f"killed after {stop_s:.0f} s"
    ),
    ok,
  )
  assert ok, server.log()[-3000:]
