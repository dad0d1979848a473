"""`mtrain sweep`: the sweep file (config), the Optuna driver, and the trials' report.

See docs/design.md for the map of the package and the direction of imports.
"""
