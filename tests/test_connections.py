"""REST connection bounds without a server: eviction order past the cap, and EMFILE logged once
per interval."""

import errno
import logging

from bert_ner.server.connections import ConnectionLimit, OutOfFilesOncePerInterval


class FakeServer:
  """What ConnectionLimit reads of aiohttp's web.Server."""

  def __init__(self):
    self.connections = []

  def connection_made(self, handler, transport):
    self.connections.append(handler)

  def connection_lost(self, handler, exc):
    self.connections.remove(handler)


class FakeHandler:
  def __init__(self, name):
    self.name, self.closed = name, False

  def force_close(self):
    self.closed = True


def connect(server, *names):
  handlers = [FakeHandler(n) for n in names]
  for handler in handlers:
    server.connection_made(handler, None)
  return handlers


def test_past_the_cap_the_oldest_idle_connection_is_closed():
  server, limit = FakeServer(), ConnectionLimit(2)
  limit.install(server)
  old, busy = connect(server, "old", "busy")
  limit._busy.add(old)  # handling a request: not evictable
  (new,) = connect(server, "new")
  assert [h.name for h in (old, busy, new) if h.closed] == ["busy"]
  server.connection_lost(busy, None)
  limit._busy.add(new)
  (newest,) = connect(server, "newest")  # every held connection is busy: the new one goes
  assert newest.closed and not old.closed and not new.closed
  assert limit.evicted == 2


def test_at_the_cap_nothing_is_closed():
  server, limit = FakeServer(), ConnectionLimit(2)
  limit.install(server)
  handlers = connect(server, "a", "b")
  assert not any(h.closed for h in handlers)


def record(message="socket.accept() out of system resource", code=errno.EMFILE):
  error = OSError(code, "Too many open files")
  return logging.LogRecord(
    "asyncio", logging.ERROR, __file__, 1, message, (), (OSError, error, None)
  )


def test_out_of_files_is_one_line_per_interval():
  now = [0.0]
  only = OutOfFilesOncePerInterval(interval_s=10, clock=lambda: now[0])
  first = record()
  assert only.filter(first) and first.exc_info is None
  assert (
    first.getMessage() == "socket.accept() out of system resource: [Errno 24] Too many open files"
  )
  assert not only.filter(record())  # within the interval
  now[0] = 9.999
  assert not only.filter(record())
  now[0] = 10.0
  later = record()
  assert only.filter(later)
  assert later.getMessage().endswith("(2 more since the last such line)")


def test_other_records_pass_untouched():
  only = OutOfFilesOncePerInterval(interval_s=10, clock=lambda: 0.0)
  other = record(code=errno.ECONNRESET)
  assert only.filter(other) and other.exc_info is not None
  plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
  assert only.filter(plain) and plain.getMessage() == "hello"
