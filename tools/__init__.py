"""Build helpers that the Makefile and buf.gen.yaml run (Python ones: `python -m tools.NAME`)."""
