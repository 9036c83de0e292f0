"""Holds many loopback connections to a port without finishing a request, as a slow or hostile
client does: `python idle_clients.py PORT COUNT MODE`. Prints "open N" once every connection is
made (N: how many the server accepted and still holds), then holds them until stdin closes.

Modes: nothing (connect only), line (a request line), header (a request line, then one header byte
every TRICKLE_S), body (headers announcing a body never sent), chunked (a chunked body that never
ends). A separate process so that the test's own descriptors do not count against the holder's.
"""

import selectors
import socket
import sys
import threading
import time

TRICKLE_S = 1.0
CONNECT_TIMEOUT_S = 10
LINE = b"POST /v1/models/bert_ner:predict HTTP/1.1\r\n"
PREFIXES = {
  "nothing": b"",
  "line": LINE,
  "header": LINE + b"Host: x\r\nX-Slow: ",
  "body": LINE + b"Host: x\r\nContent-Length: 1000\r\n\r\n{",
  "chunked": LINE + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
}


def open_all(port, count, prefix):
  """count connections, each sent prefix; those the server has not closed yet."""
  sockets = []
  for _ in range(count):
    sock = socket.socket()
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
      sock.connect(("127.0.0.1", port))
      if prefix:
        sock.sendall(prefix)
    except OSError:
      sock.close()
      continue
    sockets.append(sock)
  return sockets


def still_open(sockets):
  """The sockets the server has not closed (no EOF or reset readable yet)."""
  selector = selectors.DefaultSelector()
  for sock in sockets:
    selector.register(sock, selectors.EVENT_READ)
  closed = {key.fileobj for key, _ in selector.select(0)}
  selector.close()
  return [s for s in sockets if s not in closed]


def trickle(sockets, stop):
  """One header byte per connection every TRICKLE_S, until stop is set."""
  while not stop.wait(TRICKLE_S):
    for sock in sockets:
      try:
        sock.send(b"x")
      except OSError:
        pass


def main():
  port, count, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  sockets = open_all(port, count, PREFIXES[mode])
  stop = threading.Event()
  if mode == "header":
    threading.Thread(target=trickle, args=(sockets, stop), daemon=True).start()
  time.sleep(0.5)
  print(f"open {len(still_open(sockets))}", flush=True)
  for _ in sys.stdin:  # each line asks how many are still open; EOF ends
    print(f"open {len(still_open(sockets))}", flush=True)
  stop.set()


if __name__ == "__main__":
  main()
