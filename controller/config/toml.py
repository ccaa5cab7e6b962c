"""Reading a config file: UTF-8 TOML, bounded in size and nesting before any recursive work.

Whatever goes wrong is one `ConfigError` line naming the file, never a traceback: a missing or
unreadable file, bytes that are not UTF-8, a syntax error (with its line), a file too large
or nested too deep for a station config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from controller.errors import ConfigError, ConfigIssue

MAX_CONFIG_CHARS = 1_000_000  # a station config is a few kB
MAX_DEPTH = 16  # tables and arrays in a station config nest 3 deep


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; any failure is one `ConfigError` line, never a traceback."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [ConfigIssue("", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError(path, [ConfigIssue("", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError(
            path, [ConfigIssue("", "permission denied: the daemon's user cannot read it")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path, [ConfigIssue("", f"not UTF-8 text (bad byte at offset {exc.start})")]
        ) from None
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", f"cannot read: {exc.strerror}")]) from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(
            path, [ConfigIssue("", f"{len(text)} characters: at most {MAX_CONFIG_CHARS}")]
        )
    depth = _toml_depth(text)
    if depth > MAX_DEPTH:
        raise ConfigError(
            path, [ConfigIssue("", f"arrays or tables nested {depth} deep: at most {MAX_DEPTH}")]
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    except RecursionError:  # what the bracket scan cannot see (it is the parser's own limit)
        raise ConfigError(path, [ConfigIssue("", "nested too deeply to read")]) from None
    depth = _data_depth(data)
    if depth > MAX_DEPTH:  # dotted keys nest without brackets
        raise ConfigError(path, [ConfigIssue("", f"keys nested {depth} deep: at most {MAX_DEPTH}")])
    return data


def _toml_depth(text: str) -> int:
    """The deepest nesting of `[`/`{` in TOML text, strings and comments skipped; iterative."""
    depth = deepest = 0
    quote: str | None = None  # the string delimiter we are in: ", ', \"\"\" or \'\'\'
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote is not None:
            if ch == "\\" and quote[0] == '"':
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
            if len(quote) == 1 and ch == "\n":
                quote = None  # an unterminated one-line string: the parser says so
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote)
            continue
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def _data_depth(data: object) -> int:
    """The deepest nesting of tables and arrays in parsed TOML; iterative."""
    deepest = 0
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest
