"""Measuring models: ``latency`` (the timing harness), ``stats`` (intervals), ``runner`` (sessions on
an execution provider), ``run`` (``compress bench``) and ``report`` (JSON, Markdown, HTML, plot)."""
