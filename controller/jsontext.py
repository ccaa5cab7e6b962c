"""JSON text from outside, bounded before anything recursive reads it."""

from __future__ import annotations


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text (strings skipped), iteratively."""
    level = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            level += 1
            deepest = max(deepest, level)
        elif ch in "]}":
            level -= 1
    return deepest
