"""The one exception a demo phase raises when the product did not do what it promises."""

from __future__ import annotations


class DemoError(Exception):
    """A demo step failed; the message says which step, what was expected and what happened."""
