"""`bert_ner.server.serving.serve(options)` run in this process: real gRPC and REST answers from a
small export on free loopback ports, a clean stop, and bad options or paths raised, never exited."""

import asyncio
import dataclasses

import aiohttp
import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bert_ner.server.options import Options, OptionsError, StartError
from bert_ner.server.serving import Ready, serve
from server_fixtures import MODEL, build_model, expected

IDS, MASK = [5, 9, 12], [1, 1, 0]
TIMEOUT_S = 60


def options_for(base):
  """Options serving the model base on free loopback ports, polling only at start-up."""
  return Options(
    port=0, rest_api_port=0, model_base_path=str(base), file_system_poll_wait_seconds=0
  )


async def grpc_predict(address):
  """pred_label of one Predict over gRPC to the result signature."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL
  request.model_spec.signature_name = "result"
  request.inputs["input_ids"].CopyFrom(tf.make_tensor_proto([IDS], tf.int32))
  request.inputs["input_mask"].CopyFrom(tf.make_tensor_proto([MASK], tf.int32))
  async with grpc.aio.insecure_channel(address) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = await stub.Predict(request, timeout=TIMEOUT_S)
  return tf.make_ndarray(response.outputs["pred_label"]).tolist()


async def rest_predict(address):
  """predictions of one REST predict to the result signature."""
  body = {"signature_name": "result", "instances": [{"input_ids": IDS, "input_mask": MASK}]}
  async with aiohttp.ClientSession() as session:
    url = f"http://{address}/v1/models/{MODEL}:predict"
    async with session.post(url, json=body) as response:
      return response.status, await response.json()


async def serve_and_ask(options):
  """Starts serve(options), asks both front-ends once, stops it: (ready, gRPC answer, REST
  answer, whether the REST port still answered after the stop)."""
  stop = asyncio.Event()
  ready = asyncio.get_running_loop().create_future()
  server = asyncio.create_task(serve(options, stop, ready.set_result))
  await asyncio.wait([server, ready], timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
  if server.done():
    server.result()  # raises what made it stop
  started: Ready = ready.result()
  grpc_answer = await grpc_predict(f"{started.host}:{started.grpc_port}")
  rest_answer = await rest_predict(f"{started.host}:{started.rest_port}")
  stop.set()
  await asyncio.wait_for(server, TIMEOUT_S)
  try:
    await rest_predict(f"{started.host}:{started.rest_port}")
    answered_after_stop = True
  except aiohttp.ClientConnectionError:
    answered_after_stop = False
  return started, grpc_answer, rest_answer, answered_after_stop


@pytest.mark.slow
def test_serve_answers_grpc_and_rest_in_process_and_stops_cleanly(tmp_path):
  build_model(tmp_path / "1")
  started, grpc_answer, rest_answer, answered_after_stop = asyncio.run(
    serve_and_ask(options_for(tmp_path))
  )
  assert started.served == f"{MODEL} version 1"
  assert started.grpc_port > 0 and started.rest_port > 0
  assert grpc_answer == [expected(IDS, MASK)]
  assert rest_answer == (200, {"predictions": [expected(IDS, MASK)]})
  assert not answered_after_stop


@pytest.mark.parametrize(
  "change, message",
  [
    ({"port": 70000}, "--port 70000 is not a TCP port (0-65535)"),
    ({"max_batch_size": 0}, "--max_batch_size must be at least 1, got 0"),
  ],
)
def test_a_bad_option_raises_options_error(tmp_path, change, message):
  options = dataclasses.replace(options_for(tmp_path), **change)
  with pytest.raises(OptionsError) as error:
    asyncio.run(serve(options))
  assert str(error.value) == message


def test_a_missing_base_path_raises_start_error(tmp_path):
  with pytest.raises(StartError) as error:
    asyncio.run(serve(options_for(tmp_path / "none")))
  problem = f"base path {tmp_path / 'none'} is not a directory"
  assert str(error.value) == f"Failed to start server. Error: model {MODEL}: {problem}"


def test_unreadable_batching_parameters_raise_start_error(tmp_path):
  options = dataclasses.replace(
    options_for(tmp_path), batching_parameters_file=str(tmp_path / "none.txt")
  )
  with pytest.raises(StartError, match=r"^batching parameters: .*none\.txt"):
    asyncio.run(serve(options))
