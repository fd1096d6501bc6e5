"""FLIP trust data-access-api: validated cohort SQL on OMOP behind one disclosure gate."""

__version__ = "0.1.0"
