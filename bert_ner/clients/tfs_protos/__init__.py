"""Lite copies of the few TensorFlow Serving messages the clients need (wire-compatible)."""
