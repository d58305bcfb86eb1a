"""Strict readers for settings that come from the environment.

Each helper refuses values it does not understand instead of guessing, so a typo in
a deployment fails at start-up rather than silently running with a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_UNSET = object()


def env_str(name: str, default: str | object = _UNSET) -> str:
    """A string setting; `NAME_FILE` (a path, as Docker and Kubernetes secrets use) wins."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    value = os.environ.get(name)
    if value is not None and value != "":
        return value
    if default is _UNSET:
        raise ImproperlyConfigured(f"The environment variable {name} is required.")
    return default  # type: ignore[return-value]


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}.")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}.") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {raw!r}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str, default: list[str]) -> list[str]:
    """Addresses or networks ("10.0.0.0/8"), or "*": an entry that is neither stops the
    start-up, where at the first request it would have made every request a 500. Set to
    nothing, the list is empty."""
    raw = os.environ.get(name)
    # Set but empty says "none", as gunicorn reads FORWARDED_ALLOW_IPS.
    entries = list(default) if raw is None else [item.strip() for item in raw.split(",") if item.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name} must list IP addresses or networks (or *), not {entry!r}.") from exc
    return entries


# DRF reads the period by its first letter: "600/min", "600/minutes" and "600/m" are one rate.
_RATE = re.compile(r"[1-9][0-9]*/[smhd][a-z]*")


def env_rate(name: str, default: str) -> str:
    """A request rate as DRF reads it ("600/min"): anything else made every request that
    the rate applies to fail with a 500, long after start-up."""
    raw = env_str(name, default).strip()
    if not _RATE.fullmatch(raw):
        raise ImproperlyConfigured(
            f"{name} must be a number of requests per s, min, hour or day (600/min), not {raw!r}."
        )
    return raw


def env_timezone(name: str, default: str) -> str:
    """An IANA time zone ("Europe/Paris"): Django refuses any other with a bare ValueError,
    which no start-up message explains."""
    raw = env_str(name, default).strip()
    try:
        zoneinfo.ZoneInfo(raw)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
        raise ImproperlyConfigured(f"{name} must be an IANA time zone such as Europe/Paris, not {raw!r}.") from exc
    return raw
