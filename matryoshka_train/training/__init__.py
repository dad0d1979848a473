"""Training: the one preparation path (prepare), `mtrain check`, the plan, the trainer's arguments,
the run's phases (loop), stages, faults, checkpoints, resume and several processes.

See docs/design.md for the map of the package and the direction of imports.
"""
