"""TFDS builder; see builder.py."""
