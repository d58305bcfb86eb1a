"""Pleura's network and its weights: plain Python (tensors, arrays, dataclasses).

Modules here never import Django, except `models`, `registry`, `apps` and the
management commands, which are the Django side that wraps the rest.
"""
