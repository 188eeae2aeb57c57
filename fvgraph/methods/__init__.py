"""Visualization methods, built on the executor (forward) and the reverse engine."""
