"""Code shared by the recipe entry points under ``scripts/``: corpus building, data preparation,
the fairseq training/evaluation command line, and the demo's table and plots.

Nothing here is imported by the schedule core or the host adapters.
"""
