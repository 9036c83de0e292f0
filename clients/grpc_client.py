"""`python clients/grpc_client.py "EU rejects German call"`: the gRPC client run from a clone.

The client is `bert_ner.clients.grpc_client` (the `bert-ner-grpc` command once installed); the
clone goes on the import path so that nothing needs installing.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
runpy.run_module("bert_ner.clients.grpc_client", run_name="__main__", alter_sys=True)
