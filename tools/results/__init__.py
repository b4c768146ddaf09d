"""Generators of the README and docs/ result tables (``python -m tools.results.NAME``);
each prints the environment header of :mod:`tools.common` first."""
