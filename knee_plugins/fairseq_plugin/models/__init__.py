"""Models the plugin registers with fairseq: ``--arch transformer_mb`` (MAT) and its settings."""

from . import transformer_mb  # noqa: F401
