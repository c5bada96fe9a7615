"""API keys (compared as sha256 digests in constant time) and request-size limits."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger("stratmaster.serving")

MAX_BODY_BYTES = int(os.environ.get("SM_MAX_REQUEST_BYTES", str(1 << 20)))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """Keys from `SM_API_KEYS` (comma-separated) and/or the file named by `SM_API_KEYS_FILE` (one a line).

    Only their sha256 digests are kept. With neither variable set, auth is off and a warning is logged once;
    a variable that is set but names no key (an empty file, SM_API_KEYS="" or ",") is an error: whoever set
    it meant auth to be on, and the service does not start with it off.
    """

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in keys]
        if not self._digests:
            log.warning("no API keys configured (SM_API_KEYS / SM_API_KEYS_FILE): authentication is OFF")

    @classmethod
    def from_env(cls) -> ApiKeys:
        raw = os.environ.get("SM_API_KEYS")  # set to "" counts as set: `docker run -e SM_API_KEYS=` with
        path = os.environ.get("SM_API_KEYS_FILE")  # the host's variable unset must not turn auth off
        keys = [k.strip() for k in (raw or "").split(",") if k.strip()]
        if path:
            lines = Path(path).read_text().splitlines()
            keys += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not keys and (raw is not None or path is not None):
            raise ValueError(
                "SM_API_KEYS / SM_API_KEYS_FILE is set but holds no key: refusing to serve with "
                "authentication off (unset both to run without keys)"
            )
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> bool:
        """True when auth is off or the `Authorization: Bearer <key>` header holds a known key."""
        if not self._digests:
            return True
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        d = _digest(key.strip())
        ok = False
        for known in self._digests:  # no early exit: the time taken does not say which key matched
            ok |= hmac.compare_digest(d, known)
        return ok
