"""Command-line commands: each module has `add_arguments(parser)` and `run(args) -> int`.

Commands are thin: they read flags and call library functions that tests use directly.
"""
