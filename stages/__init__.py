"""Reusable and example stage handlers (importable as `stages.*`).

Each module says what it shows; graphs/ wires them into runnable examples.
"""
