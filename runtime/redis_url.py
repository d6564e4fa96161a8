"""Redis URLs as they may be shown: the password (in the user info or a `password=` query) masked."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

MASK = "***"


def masked(url: str) -> str:
    """`url` with its password replaced by ***, for log lines and messages; never the password itself."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a Redis URL that does not parse>"
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(key, MASK if key == "password" else value) for key, value in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def has_password(url: str) -> bool:
    """Whether `url` carries a password (user info or query)."""
    try:
        parts = urlsplit(url)
        return parts.password is not None or any(key == "password" for key, _ in parse_qsl(parts.query))
    except ValueError:
        return False


def with_password(url: str, password: str) -> str:
    """`url` with `password` in its user info (user name kept, if any)."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}"))


def authentication_failed(url: str, reason: str) -> str:
    """The one-line message for a Redis at `url` that refused to let us in (`reason`: Redis's answer)."""
    shown = masked(url)
    if "without any password configured" in reason or "no password is set" in reason:
        return (f"Redis at {shown}: authentication failed: redis_url carries a password but this Redis has "
                "none set. Set `requirepass` in Redis to that password (or remove the password from redis_url "
                "/ LAMBENT_REDIS_URL) and start again.")
    if has_password(url):
        return (f"Redis at {shown}: authentication failed: it refused the password in redis_url. Put Redis's "
                "`requirepass` password in redis_url / LAMBENT_REDIS_URL (redis://:PASSWORD@host:port/0) "
                "and start again.")
    return (f"Redis at {shown}: authentication failed: it requires a password and redis_url has none. Put "
            "Redis's `requirepass` password in redis_url / LAMBENT_REDIS_URL (redis://:PASSWORD@host:port/0) "
            "and start again.")
