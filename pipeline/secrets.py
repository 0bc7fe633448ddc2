"""Secrets in URLs, masked wherever a URL reaches output.

A data source, tracking URI, Optuna storage, prediction log or remote URL may carry a
password in its userinfo (`postgresql://user:secret@host/db`) or in its query string
(`?password=...`, `?sslpassword=...`, `?token=...`, `?X-Amz-Signature=...`).
`mask_url` shows a URL with each of them as `***`; `redact` takes a URL's secrets
out of any other text, such as a driver's error message. Plain string work: nothing
is imported, nothing connects.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"
# A query parameter whose name contains one of these holds a secret: password,
# passwd, pwd, sslpassword, secret, client_secret, token, access_token, key,
# api_key, access_key, sslkey, credential, X-Amz-Credential, X-Amz-Signature, auth,
# and Azure's SAS `sig`. A harmless one caught by the net (sslkey, a file name) is
# only hidden; a secret missed would be shown.
SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|credential|signature|auth|^sig$", re.I)
# Schemes whose bare userinfo is usually a token (https://TOKEN@host/...).
TOKEN_USER_SCHEMES = ("http", "https", "git", "ssh", "git+https", "git+ssh")


def mask_url(url: str) -> str:
    """`url` with the password in its userinfo and every secret-looking query value
    replaced by `***` (`postgresql://u:***@h/db?sslmode=require&password=***`).
    Text that is not a URL (a path, `builtin:...`) comes back unchanged."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    userinfo, address = _split_userinfo(rest)
    shown = f"{scheme}://"
    if userinfo is not None:
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            shown += f"{user}:{MASK}@"
        elif scheme.lower() in TOKEN_USER_SCHEMES:
            shown += f"{MASK}@"
        else:
            shown += f"{user}@"
    base, question, query = address.partition("?")
    shown += base
    if question:
        query, hash_, fragment = query.partition("#")
        shown += "?" + "&".join(_masked_parameter(part) for part in query.split("&"))
        shown += hash_ + fragment
    return shown


def redact(text: str, *urls: str | None) -> str:
    """`text` with every secret of `urls` (as written, percent-decoded or encoded)
    replaced by `***`: for messages that may quote a URL, such as a driver's error."""
    for value in sorted(_spellings(urls), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def url_secrets(url: str) -> list[str]:
    """The secret values in `url`, as written: the userinfo's password (or a bare
    token for TOKEN_USER_SCHEMES) and each secret-looking query parameter's value."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return []
    found = []
    userinfo, address = _split_userinfo(rest)
    if userinfo is not None:
        user, has_password, password = userinfo.partition(":")
        if has_password:
            found.append(password)
        elif scheme.lower() in TOKEN_USER_SCHEMES:
            found.append(user)
    query = address.partition("?")[2].partition("#")[0]
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if equals and SECRET_NAME.search(unquote_plus(name)):
            found.append(value)
    return [value for value in found if value]


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """(userinfo, the rest) of what follows `scheme://`; userinfo None when there is none.

    The userinfo ends at the last `@` whose user name (up to the first `:`) holds no
    `/`, `?` or `#`: an unencoded `@`, `/` or `?` in a password (which SQLAlchemy
    accepts) stays inside it, and an `@` in a path or query is no userinfo.
    """
    at = rest.rfind("@")
    while at >= 0:
        user = rest[:at].partition(":")[0]
        if not any(mark in user for mark in "/?#"):
            return rest[:at], rest[at + 1 :]
        at = rest.rfind("@", 0, at)
    return None, rest


def _masked_parameter(part: str) -> str:
    name, equals, value = part.partition("=")
    if equals and value and SECRET_NAME.search(unquote_plus(name)):
        return f"{name}={MASK}"
    return part


def _spellings(urls: tuple[str | None, ...]) -> set[str]:
    spellings = set()
    for url in urls:
        for value in url_secrets(url or ""):
            spellings |= {value, unquote(value), unquote_plus(value)}
            spellings |= {quote(unquote(value), safe=""), quote_plus(unquote_plus(value))}
    return {value for value in spellings if value}
