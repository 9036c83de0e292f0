"""Embedded TensorFlow Serving: the same gRPC and REST APIs, for machines without Docker."""
