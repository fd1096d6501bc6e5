"""``flip demo``: the product walkthrough on embedded defaults (see :mod:`flip_cli.demo.phases`)."""

from flip_cli.demo.command import demo

__all__ = ["demo"]
