"""Bounds on REST connections: how long a client may take to send a request, how many
connections are held, and how often running out of file descriptors is logged.

Without them a client that connects and sends nothing (or a request line, or a header byte now
and then, or headers announcing a body it never sends) holds its connection for good; 20,000 such
connections used every descriptor of the process, so gRPC stopped answering too, and asyncio
logged a traceback per failed accept (1.9 million lines a minute).

- Headers: a request's line and headers must arrive within the read timeout of the connection
  opening or of the previous answer (aiohttp's keep-alive timer, which runs from both).
- Body: a body that makes no progress for the read timeout is answered 408 and the connection
  closed (nginx's client_body_timeout).
- Count: past the cap, the connection idle the longest (no request being handled) is closed, or
  the new one if every held connection is handling a request; the descriptors a REST client can
  hold stay below the process's limit, and a new client is served even while the cap is full of
  idle ones.
"""

import asyncio
import errno
import logging
import time

import grpc
from aiohttp import web

from bert_ner.server.errors import ServingError

DEFAULT_READ_TIMEOUT_MS = 50_000  # libevent's HTTP timeout, which TF Serving's REST server keeps
DEFAULT_MAX_CONNECTIONS = 1024
OUT_OF_FILES_LOG_INTERVAL_S = 10.0
_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


class ConnectionLimit:
  """Holds at most `cap` REST connections; evicts the longest idle one past it."""

  def __init__(self, cap):
    self.cap = cap
    self.evicted = 0
    self._held = {}  # protocol -> None, oldest first (each step O(1): 20,000 connects a second)
    self._busy = set()  # protocols handling a request (aiohttp handles one at a time each)

  @web.middleware
  async def track(self, request, handler):
    """Marks the request's connection busy (not evictable) while its handler runs."""
    protocol = request.protocol
    self._busy.add(protocol)
    try:
      return await handler(request)
    finally:
      self._busy.discard(protocol)

  def install(self, server):
    """Counts the connections the aiohttp server (runner.server) takes and loses."""
    made, lost = server.connection_made, server.connection_lost

    def connection_made(handler, transport):
      made(handler, transport)
      self._held[handler] = None
      if len(self._held) > self.cap:
        self._evict(handler)

    def connection_lost(handler, exc):
      self._held.pop(handler, None)
      lost(handler, exc)

    server.connection_made, server.connection_lost = connection_made, connection_lost

  def _evict(self, newest):
    """Closes the oldest connection not handling a request (the newest if all are)."""
    idle = next((c for c in self._held if c not in self._busy and c is not newest), newest)
    del self._held[idle]
    self.evicted += 1
    idle.force_close()


async def read_body(request, timeout_s):
  """The request body; 408 (and the connection closed) once it makes no progress for timeout_s.

  A body trickling in stays bounded by the size limit (413) and this timeout between reads.
  """
  reading = asyncio.ensure_future(request.read())
  seen = -1
  while True:
    done, _ = await asyncio.wait({reading}, timeout=timeout_s)
    if done:
      return reading.result()
    received = request.content.total_bytes
    if received == seen:  # aiohttp closes the connection once the answer is sent
      reading.cancel()
      raise ServingError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"Request body not received within {timeout_s:g} s",
        http_status=408,
      )
    seen = received


class OutOfFilesOncePerInterval(logging.Filter):
  """Lets one record per interval through about running out of file descriptors (EMFILE,
  ENFILE), as one line with the count held back; asyncio logs one traceback per failed accept."""

  def __init__(self, interval_s=OUT_OF_FILES_LOG_INTERVAL_S, clock=time.monotonic):
    super().__init__()
    self._interval_s, self._clock = interval_s, clock
    self._next, self._held = float("-inf"), 0

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    if not (isinstance(error, OSError) and error.errno in _OUT_OF_FILES):
      return True
    now = self._clock()
    if now < self._next:
      self._held += 1
      return False
    held = f" ({self._held} more since the last such line)" if self._held else ""
    record.msg, record.args = f"{record.getMessage().splitlines()[0]}: {error}{held}", ()
    record.exc_info = record.exc_text = None
    self._next, self._held = now + self._interval_s, 0
    return True
