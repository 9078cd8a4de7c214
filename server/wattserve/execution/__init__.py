"""Execution: ONNX Runtime sessions, the only place that blocks, run on threads the server owns."""
