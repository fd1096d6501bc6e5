"""FLIP trust imaging-api: PACS retrieval, de-identification, NIfTI conversion and the research image store."""

__version__ = "0.1.0"
