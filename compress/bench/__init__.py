"""Measuring models: latency (``latency.py``)."""
