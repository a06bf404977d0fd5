"""compress: distil a small student from a teacher, export it to ONNX, and prove it is better."""

__version__ = "0.1.0"
