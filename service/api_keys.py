"""API keys and their scopes: parsing the key file, hashing, and looking a presented key up.

The service holds only SHA-256 digests of keys (from `R2M_API_KEYS_FILE` and/or `R2M_API_KEYS`),
so a leaked config file or environment does not leak a usable key. Keys are 256-bit random
tokens, so a plain (unsalted, fast) hash is enough. A presented key is hashed and compared against
every digest with `hmac.compare_digest`, without stopping at a match, so timing does not reveal
which digest, or how much of one, it matched.

Key file: one key per line, `<sha256-hex> <scope>[,<scope>...] [name]`; `#` starts a comment.
`R2M_API_KEYS` holds the same lines separated by `;`. `r2m keys new` makes a key and its line.
HTTP concerns (headers, 401 vs 403) live in `http/auth.py`; this module is also used by the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from r2m_service.settings import Settings

KEY_PREFIX = "r2m_"
_DIGEST = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


class Scope(str, Enum):
    """What a key may do; `admin` implies every other scope."""

    SCORE = "score"
    UPDATE = "update"
    ADMIN = "admin"
    METRICS = "metrics"


@dataclass(frozen=True)
class ApiKey:
    digest: bytes
    scopes: frozenset[Scope]
    name: str

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(text: str) -> frozenset[Scope]:
    """`score,update` → scopes; an unknown name is an error, never silently ignored."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {s.value for s in Scope}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown or missing scopes {unknown or text!r}; "
                         f"choose from {', '.join(sorted(known))}")
    return frozenset(Scope(n) for n in names)


def key_line(key: str, scopes: frozenset[Scope], name: str = "") -> str:
    """The key-file line for `key` (its digest, never the key)."""
    order = [s.value for s in Scope if s in scopes]
    return " ".join(part for part in (hash_key(key), ",".join(order), name) if part)


def parse_keys(text: str, source: str, separator: str = "\n") -> list[ApiKey]:
    """Key-file lines → keys. Errors name the line, never echo it (it might be a raw key)."""
    keys = []
    for number, raw in enumerate(text.split(separator), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split(None, 2)
        where = f"{source} entry {number}"
        match = _DIGEST.fullmatch(fields[0].lower())
        if match is None:
            raise ValueError(f"{where}: expected the SHA-256 hex digest of a key, not the key "
                             "itself (make one with `r2m keys new` or `r2m keys hash`)")
        if len(fields) < 2:
            raise ValueError(f"{where}: missing scopes after the digest")
        try:
            scopes = parse_scopes(fields[1])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        name = fields[2].strip() if len(fields) > 2 else f"{Path(source).name}#{number}"
        keys.append(ApiKey(bytes.fromhex(match.group(1)), scopes, name))
    return keys


class KeyRing:
    """The configured keys; empty means the service runs open."""

    def __init__(self, keys: list[ApiKey], metrics_auth: bool = False) -> None:
        self.keys = keys
        self.metrics_auth = metrics_auth

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys = []
        if settings.api_keys_file:
            path = Path(settings.api_keys_file)
            keys += parse_keys(path.read_text(), str(path))
        if settings.api_keys:
            keys += parse_keys(settings.api_keys, "R2M_API_KEYS", separator=";")
        return cls(keys, settings.metrics_auth)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def find(self, key: str) -> ApiKey | None:
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for candidate in self.keys:
            if hmac.compare_digest(digest, candidate.digest) and found is None:
                found = candidate
        return found
