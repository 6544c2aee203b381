"""POLAR data: the official text encoding, row validation, sources, packing and pipelines.

This package knows tokenizers, never models.
"""
