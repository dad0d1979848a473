"""Outputs: results.json figures, the report and model card, plots, carbon, and secret redaction.

See docs/design.md for the map of the package and the direction of imports.
"""
