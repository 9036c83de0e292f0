"""Can we listen there? Asked before a model loads, so a busy port is reported at once."""

import errno
import os
import socket

COMMAND_CHARS = 80  # a holder's command line, shortened to keep the report on one line


def listen_problem(host: str, port: int) -> str | None:
  """Why `port` on `host` cannot be listened on, naming the holder if it can; None if it can.

  A trial bind with SO_REUSEADDR, as aiohttp binds: a port left in TIME_WAIT is free, one that
  something listens on (also on 0.0.0.0 or ::) is not. Port 0 (any free port) is always fine.
  """
  if port == 0:
    return None
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_STREAM) as trial:
    trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      trial.bind((host, port))
    except OSError as error:
      if error.errno == errno.EADDRINUSE:
        return f"in use by {holder(port)}"
      return error.strerror or str(error)
  return None


def holder(port: int) -> str:
  """'pid N (command line)' of the process listening on `port`, as far as this user may see."""
  import psutil  # pylint: disable=import-outside-toplevel  (only when a port is busy)

  try:
    pids = {
      c.pid
      for c in psutil.net_connections("tcp")
      if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }
  except psutil.AccessDenied:
    pids = set()
  for pid in sorted(pid for pid in pids if pid is not None):
    try:
      argv = psutil.Process(pid).cmdline()
    except psutil.Error:
      continue
    command = " ".join([os.path.basename(argv[0]), *argv[1:]]) if argv else "?"
    if len(command) > COMMAND_CHARS:
      command = command[: COMMAND_CHARS - 3] + "..."
    return f"pid {pid} ({command})"
  return "a process of another user"
