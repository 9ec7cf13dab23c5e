"""Admin endpoints (scope admin): a realm's SMTP settings with Keycloak's semantics, realms, dead letters,
stats. (Being written.)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["admin"])
