"""Tags a CoNLL file through the served model (gRPC, REST) or in-process; seqeval scores."""
