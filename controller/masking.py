"""Secrets out of sight: a URL's password (or a lone user part that is a token) shown as `***`."""

from __future__ import annotations

import re

#: A URL inside free text: a scheme, then everything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)


def mask_url(url: str, *, secret_user: bool = False) -> str:
    """`url` with its password (or, with `secret_user`, a lone user part such as a token) as `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The authority ends at the first '/', '?' or '#'; its userinfo ends at the last '@' (RFC 3986).
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        # An unencoded '?' or '#' in a password cuts the authority short: hide all before the '@'.
        hidden = rest.partition("/")[0].rpartition("@")[0]
        return f"{scheme}://***@{rest[len(hidden) + 1:]}" if hidden else url
    user, colon, _ = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:***"
    elif secret_user:
        userinfo = "***"
    return f"{scheme}://{userinfo}@{host}{tail}"


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group()), text)
