"""``/api/v1/auth``: tokens for users (name + password) and devices (device id + secret).

- ``POST /api/v1/auth/token``: OAuth2 password form → access and refresh tokens.
- ``POST /api/v1/auth/refresh``: ``Authorization: Bearer <refresh token>`` → a new pair; the
  old refresh token is revoked (using it again revokes every refresh token of its owner).
- ``GET /api/v1/auth/me``: who the access token says the caller is.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from cloud.api.deps import CurrentPrincipal, NowDep, StateDep, bearer_token
from cloud.api.errors import AUTH_RESPONSES, ErrorBody
from cloud.security.errors import AccountLockedError, AuthenticationError
from cloud.services.accounts import TokenPair, authenticate, issue_token_pair, refresh_token_pair
from cloud.services.audit import record_audit

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenResponse(BaseModel):
    """OAuth2 token response (RFC 6749 section 5.1) with the refresh token."""

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Lifetime of the access token in seconds")


class WhoAmI(BaseModel):
    """The caller as the access token names it."""

    subject: str
    role: str
    battery_id: str | None = None


def _response(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in_s,
    )


@router.post(
    "/token",
    response_model=TokenResponse,
    responses={401: {"model": ErrorBody, "description": "Wrong credentials or locked account"}},
)
def issue_tokens(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], state: StateDep, now: NowDep
) -> TokenResponse:
    """Log in: ``username`` is a user name or a device id (``dev-…``), ``password`` the
    password or device secret. Repeated failures lock a user account for a while."""
    try:
        principal = authenticate(state.db, state.security, form.username, form.password, now)
    except AuthenticationError as exc:
        reason = "locked" if isinstance(exc, AccountLockedError) else "bad_credentials"
        state.metrics.auth_failures.labels(reason=reason).inc()
        with state.db.write() as session:
            record_audit(
                session,
                actor=f"login:{form.username[:64]}",
                action="login",
                outcome="failed",
                detail={"reason": reason},
                at=now,
            )
        raise
    return _response(issue_token_pair(state.db, state.security, principal, now))


@router.post("/refresh", response_model=TokenResponse, responses=AUTH_RESPONSES)
def refresh_tokens(
    token: Annotated[str | None, Depends(bearer_token)], state: StateDep, now: NowDep
) -> TokenResponse:
    """Trade a refresh token (sent as ``Authorization: Bearer``) for a new pair."""
    if not token:
        raise AuthenticationError("not authenticated: send Authorization: Bearer <refresh token>")
    try:
        pair = refresh_token_pair(state.db, state.security, token, now)
    except AuthenticationError:
        state.metrics.auth_failures.labels(reason="bad_refresh").inc()
        raise
    return _response(pair)


@router.get("/me", response_model=WhoAmI, responses=AUTH_RESPONSES)
def who_am_i(principal: CurrentPrincipal) -> WhoAmI:
    """The caller's name, role and (for a device) battery."""
    return WhoAmI(
        subject=principal.subject, role=principal.role.value, battery_id=principal.battery_id
    )
