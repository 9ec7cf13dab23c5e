"""Keycloak's own event JSON, as event-listener webhook extensions post it. (Being written.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["keycloak"])
