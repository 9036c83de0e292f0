"""TensorFlow-free gRPC and REST clients for the served bert_ner model."""
