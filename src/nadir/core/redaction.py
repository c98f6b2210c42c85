"""URLs without their secrets: the one form in which nadir writes a URL anywhere.

A URL may carry a secret: user info (`https://user:token@host/`), a pre-signed query
(`?X-Amz-Signature=...`, `?token=...`) or a fragment. `redact` drops those parts and puts a short
hash of the whole URL in their place, so that two such URLs stay apart. Every NadirError's message
goes through `redact_urls_in` (nadir.core.errors), so a library's message that quotes the URL it
failed on (GDAL's, botocore's) cannot carry the secret into a log or a report either.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

MARKER = "redacted-"
HASH_DIGITS = 12
# A URL inside free text: a scheme, then everything up to a space, a quote or a bracket.
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")
TRAILING_PUNCTUATION = ".,:;!?"


def redact(url: str) -> str:
    """`url` without user info, query and fragment, and with `?redacted-<hash>` (12 hex digits
    of the whole URL's SHA-256) in their place; URLs without those parts, and local paths, are
    returned as they are, and so are URLs already redacted."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.fragment \
            and "@" not in parts.netloc \
            and (not parts.query or _is_hash(parts.query.removeprefix(MARKER))
                 and parts.query.startswith(MARKER)):
        return url
    digest = hashlib.sha256(url.encode()).hexdigest()[:HASH_DIGITS]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, f"{MARKER}{digest}", ""))


def _is_hash(text: str) -> bool:
    return len(text) == HASH_DIGITS and all(c in "0123456789abcdef" for c in text)


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it in its `redact`ed form (punctuation that ends a sentence
    after a URL is not taken as part of it)."""

    def redacted(match: re.Match) -> str:
        url = match.group()
        stripped = url.rstrip(TRAILING_PUNCTUATION)
        return redact(stripped) + url[len(stripped):]

    return URL_IN_TEXT.sub(redacted, text)
