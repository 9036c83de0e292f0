#!/bin/sh
# Regenerate tfs_lite_pb2.py after editing tfs_lite.proto (needs grpcio-tools, run from anywhere).
cd "$(dirname "$0")/../.." && exec "${PYTHON:-.venv/bin/python}" -m grpc_tools.protoc -I . --python_out=. clients/tfs_protos/tfs_lite.proto
