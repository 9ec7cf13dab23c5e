"""Admin endpoints for a realm's suppression list (scope admin; a realm-limited token, its realms only).

    GET    /v1/realms/{realm}/suppressions             the suppressed addresses, newest first
    DELETE /v1/realms/{realm}/suppressions/{address}   let the address receive bulk notices again

A hard bounce or a complaint suppresses an address for bulk notices (worker/bounces/suppression.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from config.errors import NotFound
from worker.http.auth import admin, realm_for
from worker.http.context import context_of
from worker.http.tokens import ApiToken

router = APIRouter(prefix="/v1", tags=["admin: suppressions"])
MAX_ADDRESS = 320


@router.get("/realms/{realm}/suppressions", summary="The realm's suppressed addresses, newest first")
def suppressions(realm: str, request: Request, token: ApiToken = Depends(admin)) -> dict[str, Any]:  # noqa: B008
    realm_for(token, realm)
    entries = context_of(request).runtime.suppressions.list(realm)
    return {"realm": realm, "suppressions": [entry.to_json() for entry in entries]}


@router.delete("/realms/{realm}/suppressions/{address}", status_code=204,
               summary="Remove an address from the suppression list")  # fmt: skip
def remove(realm: str, address: str, request: Request, token: ApiToken = Depends(admin)) -> Response:  # noqa: B008
    realm_for(token, realm)
    if len(address) > MAX_ADDRESS or not context_of(request).runtime.suppressions.remove(realm, address):
        raise NotFound(f"{address[:MAX_ADDRESS]} is not suppressed in realm {realm}")
    return Response(status_code=204)
