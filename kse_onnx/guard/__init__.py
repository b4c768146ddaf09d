"""Accuracy guard for pipelines: calibration inputs in any form, the measured drop of a
compressed model against its original, and the ``--max-drop`` search (docs/pipelines.md)."""
