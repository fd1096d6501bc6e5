"""The `flip` command line."""
