"""Native memory under many requests that fail in the model (a mask value the graph refuses),
64 in flight: it must level off, not grow per request."""

import psutil

from rel_support import GOOD_IDS, call_all, grpc_inputs, grpc_request

IN_FLIGHT = 64
WARM, MEASURED = 4_000, 16_000
# TensorFlow kept about 0.8 KB per failing run with a RunOptions timeout: 16,000 requests grew
# the RSS by 14 to 16 MB. Requests that succeed, or fail before the model, stay within 2 MB.
GROWTH_LIMIT_MB = 6


def test_failing_model_runs_do_not_grow_memory(env, report):
  request = grpc_request(grpc_inputs(GOOD_IDS, [[1, 1, 2, 1, 1, 1]]))
  process = psutil.Process(env.server.pid)
  call_all(env.server, [request] * WARM, IN_FLIGHT)
  before = process.memory_info().rss / 2**20
  answers = call_all(env.server, [request] * MEASURED, IN_FLIGHT)
  after = process.memory_info().rss / 2**20
  refused = {code for code, _ in answers} == {"INVALID_ARGUMENT"}
  ok = refused and after - before <= GROWTH_LIMIT_MB
  report.add(
    "load",
    f"{MEASURED:,} gRPC requests failing in the model (input_mask value 2), {IN_FLIGHT} in "
    f"flight, after {WARM:,} to warm up",
    "grpc",
    f"INVALID_ARGUMENT each; server RSS within +{GROWTH_LIMIT_MB} MB",
    f"{sorted({c for c, _ in answers})}; RSS {before:.1f} -> {after:.1f} MB "
    f"({(after - before) * 2**20 / MEASURED:.0f} bytes per request)",
    ok,
  )
  assert ok, (before, after)
