"""Measuring models: ``latency`` (the timing harness), ``stats`` (intervals), ``runner`` (sessions on
an execution provider), ``report`` and ``report_model`` (the report, its schema, JSON/Markdown/HTML
and the plot). The ``compress bench`` stage itself is ``compress.stages.bench``."""
