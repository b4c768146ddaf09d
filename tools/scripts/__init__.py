"""Setup, demo, tests, fuzzing and model builders (``bash tools/scripts/NAME.sh``,
``python -m tools.scripts.NAME``)."""
