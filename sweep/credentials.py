"""Credentials stay out of output: URLs are shown with their password masked.

Storage and tracking URLs may carry a password (`postgresql://user:secret@host/db`). Everything the
tool prints, logs or stores about them goes through `mask_url` / `redact`. The password can also stay
off the command line: `SWEEP_STORAGE` and `MLFLOW_TRACKING_URI` stand in for the flags, and a
PostgreSQL URL without a password lets libpq read `PGPASSWORD` or `~/.pgpass`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
STORAGE_ENV = "SWEEP_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:  # not a URL (a bad port, say): nothing to find
        return None


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***: safe to print, log or store."""
    if not _password(url):
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def redact(text: str, *urls: str | None) -> str:
    """`text` with every password of `urls` masked, wherever it appears (drivers echo them too)."""
    for url in filter(None, urls):
        password = _password(url)
        if password:
            text = text.replace(url, mask_url(url))
            for form in {password, unquote(password)}:  # as written in the URL, and as the driver sees it
                text = text.replace(form, MASK)
    return text
