"""matryoshka-train: train Matryoshka sentence encoders from a YAML config."""

__version__ = "0.1.0"
