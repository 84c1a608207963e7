"""Atheris fuzz targets for lmtp_core, their seed corpora, and a bounded runner (run_all.py)."""
