"""Secret values in the configuration: ``env:``/``file:`` references and what to scrub.

Values written ``env:NAME`` or ``file:PATH`` are resolved once at load; they and
the values of credential-looking keys (tokens, keys, passwords, URLs that carry a
token) are collected so the log redactor can scrub them from every line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Set
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError
from .schema import Errors

__all__ = ["MIN_SECRET_CHARS", "collect_secrets", "resolve_secrets", "scrub"]

#: Keys whose values are credentials (or carry them, like URLs with a token path).
_SECRET_KEY = re.compile(r"(token|passw|secret|key$|_key|apikey|url$|username|auth|credential)", re.I)
_SECRET_HEADER = re.compile(r"(auth|token|key|secret|cookie|signature|session)", re.I)
#: Values shorter than this are not redacted: scrubbing "on" from every log line helps nobody.
MIN_SECRET_CHARS = 4


def resolve_secrets(value: Any, key: str, secrets: Set[str], errors: Errors) -> Any:
    """Replace ``env:NAME`` / ``file:PATH`` strings by their value, recording it as secret.

    A reference that cannot be resolved is an error in ``errors`` and stays as written
    (so the rest of the file is still checked).
    """
    if isinstance(value, dict):
        return {k: resolve_secrets(v, f"{key}.{k}" if key else k, secrets, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secrets(v, _item_key(key, i, v), secrets, errors) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    with errors.catch():
        return _resolve_one(value, key, secrets)
    return value


def _resolve_one(value: str, key: str, secrets: Set[str]) -> str:
    if value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ConfigError(key, "env: needs a variable name")
        if name not in os.environ:
            raise ConfigError(key, f"environment variable {name} is not set")
        resolved = os.environ[name]
    elif value.startswith("file:"):
        path = value[5:]
        try:
            resolved = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(key, f"secret file {path} is not UTF-8") from None
    else:
        return value
    if not resolved:
        raise ConfigError(key, "secret resolves to an empty value")
    secrets.add(resolved)
    secrets.update(_url_secrets(resolved))
    return resolved


def _item_key(key: str, index: int, item: Any) -> str:
    """``target.pd`` rather than ``target[2]`` for named tables, so errors read naturally."""
    if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
        return f"{key}.{item['name']}"
    return f"{key}[{index}]"


def collect_secrets(table: Mapping[str, Any], secrets: Set[str], declared: Iterable[str] = ()) -> None:
    """Record values of declared secret keys and credential-looking keys (and header values)."""
    marked = set(declared)
    for key, value in table.items():
        if key in ("name", "type"):
            continue
        if isinstance(value, dict):
            for sub, inner in value.items():
                if isinstance(inner, str) and (key == "headers" and _SECRET_HEADER.search(sub) or _SECRET_KEY.search(sub)):
                    secrets.add(inner)
            continue
        if isinstance(value, str) and (key in marked or _SECRET_KEY.search(key)):
            secrets.add(value)
            secrets.update(_url_secrets(value))


def _url_secrets(value: str) -> Set[str]:
    """Parts of a URL that can carry a credential on their own.

    HTTP libraries quote the path without the host in their errors, so the token
    path segment must be scrubbed even where the full URL does not appear.
    """
    out: Set[str] = set()
    if "://" not in value:
        out.update(_dsn_secrets(value))
        return out
    try:
        parts = urlsplit(value)
    except ValueError:
        return out
    if parts.password:
        out.add(parts.password)
    out.add(value.split("://", 1)[1])
    segments = [s for s in parts.path.split("/") if s]
    risky = [s for s in segments if _token_like(s)]
    out.update(risky)
    if risky:
        out.add(parts.path)
        if parts.query:
            out.add(f"{parts.path}?{parts.query}")
    for _, v in parse_qsl(parts.query):
        if len(v) >= 8:
            out.add(v)
    return out


_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _dsn_secrets(value: str) -> Set[str]:
    """The password of a libpq ``key=value`` DSN (``password=s3cret`` or ``password='a b'``)."""
    out: Set[str] = set()
    for match in _DSN_PASSWORD.finditer(value):
        word = match.group(1)
        if word.startswith("'"):
            word = word[1:-1].replace("\\'", "'").replace("\\\\", "\\")
        out.add(word)
    return out


def _token_like(segment: str) -> bool:
    """Long, or mixing letters and digits: what generated tokens and keys look like."""
    if len(segment) >= 20:
        return True
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 10 and has_digit and has_alpha


def scrub(text: str, secrets: Set[str]) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
    return text
