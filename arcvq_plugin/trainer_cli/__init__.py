"""Pieces of the ``arcvq-train`` command (``arcvq_plugin.main``): arguments, config checks, resume,
run-directory and signal callbacks."""
