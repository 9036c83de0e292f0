#!/bin/sh
# Regenerate the *_pb2.py files after editing their .proto (run from anywhere; needs PyPI).
#
# bert_ner/clients/tfs_protos/tfs_lite.proto: the clients run in .venv, so .venv's protoc (grpcio-tools as
# pinned in requirements.lock) writes gencode of .venv's protobuf.
# bert_ner/server/tfs_config.proto: tests/tf218_runtime.py also imports it in .venv-tf218, whose protobuf
# 5.29.6 refuses gencode newer than itself ("Runtime version cannot be older than the linked
# gencode version"), while .venv's 7.x loads older gencode. So it is compiled by protoc 29.0
# (grpcio-tools 1.71.0, in a throwaway venv): gencode 5.29.0, which both load.
set -e
cd "$(dirname "$0")/../.."
"${PYTHON:-.venv/bin/python}" -m grpc_tools.protoc -I . --python_out=. bert_ner/clients/tfs_protos/tfs_lite.proto
protoc29=$(mktemp -d)
trap 'rm -rf "$protoc29"' EXIT
python3 -m venv "$protoc29"
"$protoc29/bin/pip" install -q --disable-pip-version-check grpcio-tools==1.71.0
"$protoc29/bin/python" -m grpc_tools.protoc -I . --python_out=. bert_ner/server/tfs_config.proto
