"""Which tenant a call is charged to: the `x-wattserve-tenant` metadata header, or the default.

This is the one place to replace when tenants are bound to credentials (an authenticator would
derive the tenant from the caller's identity instead of trusting a header).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from wattserve.core.errors import InvalidRequest
from wattserve.core.types import DEFAULT_TENANT

TENANT_HEADER = "x-wattserve-tenant"
_VALID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def tenant_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == TENANT_HEADER:
            name = value.decode() if isinstance(value, bytes) else value
            if not _VALID.fullmatch(name):
                raise InvalidRequest(
                    f"metadata {TENANT_HEADER} must be 1 to 64 characters of A-Z, a-z, 0-9, "
                    f"'.', '_' or '-'; got {name[:80]!r}"
                )
            return name
    return DEFAULT_TENANT
