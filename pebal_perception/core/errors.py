"""Turning an exception into the short text of a one-line error message.

The tools report every failure on one line (``prog: error: PATH: what went wrong``); library
exceptions often carry multi-line messages, or none at all, so this keeps their first line.
"""
from __future__ import annotations


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of ``exc``'s message, or its type name when the message is empty.

    ``with_type`` prefixes the type name (``"ValueError: bad value"``), for messages where the type is
    the only clue to which library failed."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if with_type else line
