"""HTTPS uplink: batches are POSTed to the cloud's REST API, commands are polled.

* Device token: ``POST /api/v1/auth/token`` (OAuth2 password form: ``username`` = device id,
  ``password`` = device secret) gives ``access_token`` (and ``refresh_token``); the token is
  renewed before it expires (``expires_in`` or the JWT's ``exp``): ``POST /api/v1/auth/refresh``
  with the refresh token as bearer first, then the password form again; and after a 401.
* Batch: ``POST /api/v1/batteries/{battery_id}/telemetry`` with the ``UplinkBatch`` JSON,
  gzip-compressed (``Content-Encoding: gzip``) unless ``compress`` is off. The cloud answers 2xx
  only after the commit, and stores each ``(battery, seq)`` once.
* Outcomes: 2xx ``ACKED``; 400 and 422 (the records are bad) ``REJECTED`` (the forwarder
  isolates and dead-letters them); 413 ``TOO_LARGE``; everything else (401: token renewed; 403,
  404: a configuration error; 429, 5xx, network or TLS errors) ``RETRY`` with backoff
  (``Retry-After`` honoured): no record is ever dropped for a problem of the setup. A
  400/415/422 to a gzip body is tried once uncompressed at once; if that is taken, the cloud
  does not decode gzip and compression stays off.
* Commands: ``GET /api/v1/batteries/{battery_id}/commands?pending=true`` every
  ``command_poll_s``, and at once after the cloud is reachable again (desired-state sync).
* TLS: verified against ``ca_file`` (or the system's CAs); ``verify = false`` only in a lab.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import ssl
from pathlib import Path
from typing import Any

import httpx

from edge_runtime.clock import SYSTEM_CLOCK, Clock
from edge_runtime.config import HttpUplinkSettings
from edge_runtime.outbox import OutboxBatch
from edge_runtime.uplink import Delivery, Outcome, Uplink
from twin.errors import ConfigError

__all__ = ["HttpUplink", "classify_response"]

log = logging.getLogger("edge_runtime.uplink.http")

TOKEN_PATH = "/api/v1/auth/token"
REFRESH_PATH = "/api/v1/auth/refresh"
_REJECT_STATUSES = frozenset({400, 422})
_MAYBE_NO_GZIP = frozenset({400, 415, 422})
_TOKEN_MARGIN_S = 60.0
_DEFAULT_TOKEN_LIFE_S = 300.0
_USER_AGENT = "b2l-edge/0.1"


class _AuthError(Exception):
    """The token route refused the device or could not be reached."""


def retry_after_s(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (None if absent or a date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0.0 else None


def classify_response(response: httpx.Response) -> tuple[Outcome, str]:
    """The outcome of a batch POST from its HTTP status (see the module docstring).

    Only 400 and 422 say the records themselves are bad: everything else that is not a success
    (an unknown battery, a device of another battery, a proxy's answer) is a configuration or
    transient problem and is retried with backoff, never dead-lettered.
    """
    status = response.status_code
    if 200 <= status < 300:
        return Outcome.ACKED, ""
    detail = f"HTTP {status}: {response.text[:300]}"
    if status == 413:
        return Outcome.TOO_LARGE, detail
    if status in _REJECT_STATUSES:
        return Outcome.REJECTED, detail
    if 300 <= status < 400:
        return Outcome.RETRY, f"unexpected redirect: {detail}"
    return Outcome.RETRY, detail


def _jwt_expiry_s(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verification (only to schedule a refresh)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = float(data["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
    return exp if math.isfinite(exp) else None


class HttpUplink(Uplink):
    """The HTTPS adapter (see the module docstring)."""

    kind = "http"

    def __init__(
        self,
        battery_id: str,
        base_url: str,
        device_id: str,
        secret: str,
        *,
        ca_file: Path | None = None,
        verify: bool = True,
        timeout_s: float = 10.0,
        compress: bool = True,
        command_poll_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(battery_id, clock=clock)
        self.base_url = base_url.rstrip("/")
        self.device_id = device_id
        self._secret = secret
        self.compress = compress
        self.command_poll_s = command_poll_s
        verify_arg: ssl.SSLContext | bool = verify
        if ca_file is not None and verify:
            try:
                verify_arg = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"uplink.ca_file: cannot load {ca_file}: {exc}") from None
        if not verify:
            log.warning("TLS verification is OFF for %s (uplink.verify = false)", base_url)
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=verify_arg,
            timeout=timeout_s,
            transport=transport,
            headers={"User-Agent": _USER_AGENT},
        )
        self._token: str | None = None
        self._refresh_token: str | None = None
        self._token_expires_s = -math.inf
        self._reachable: bool | None = None
        self._next_poll_s = -math.inf
        self.last_error: str | None = None
        self.requests = 0
        self.auth_failures = 0

    @classmethod
    def from_settings(
        cls, battery_id: str, settings: HttpUplinkSettings, *, clock: Clock = SYSTEM_CLOCK
    ) -> HttpUplink:
        """The adapter the ``[uplink]`` section describes."""
        return cls(
            battery_id,
            settings.base_url,
            settings.device_id,
            settings.secret_value(),
            ca_file=settings.ca_file,
            verify=settings.verify,
            timeout_s=settings.timeout_s,
            compress=settings.compress,
            command_poll_s=settings.command_poll_s,
            clock=clock,
        )

    @property
    def connected(self) -> bool:
        """Always ready to try: reachability is learnt by trying (and backed off)."""
        return True

    # ---------------------------------------------------------------- transport helpers

    def _note_reachable(self, reachable: bool) -> None:
        before, self._reachable = self._reachable, reachable
        if before is False and reachable:
            log.info("the cloud is reachable again: syncing pending commands")
            self._next_poll_s = -math.inf
            if self.listener is not None:
                self.listener.on_connection(True, True)
        elif before is not False and not reachable and self.listener is not None:
            self.listener.on_connection(False, False)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.requests += 1
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError:
            self._note_reachable(False)
            raise
        self._note_reachable(True)
        return response

    # ---------------------------------------------------------------- token

    def _token_value(self) -> str:
        now = self.clock.wall_s()
        if self._token is None or now >= self._token_expires_s - _TOKEN_MARGIN_S:
            self._login(now)
        assert self._token is not None
        return self._token

    def _login(self, now_s: float) -> None:
        """A new token pair: the refresh token first (``/auth/refresh``), else the secret."""
        attempts: list[tuple[str, dict[str, Any]]] = []
        if self._refresh_token is not None:
            attempts.append(
                (REFRESH_PATH, {"headers": {"Authorization": f"Bearer {self._refresh_token}"}})
            )
        attempts.append(
            (
                TOKEN_PATH,
                {
                    "data": {
                        "grant_type": "password",
                        "username": self.device_id,
                        "password": self._secret,
                    }
                },
            )
        )
        last = ""
        for path, kwargs in attempts:
            try:
                response = self._request("POST", path, **kwargs)
            except httpx.HTTPError as exc:
                raise _AuthError(f"token request failed: {exc}") from None
            if response.is_success:
                self._take_tokens(response, now_s)
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            if path == REFRESH_PATH:
                self._refresh_token = None
            elif response.status_code == 429 or response.status_code >= 500:
                raise _AuthError(f"the token route is unavailable ({last})")
        self.auth_failures += 1
        raise _AuthError(f"the cloud refused the device credentials ({last})")

    def _take_tokens(self, response: httpx.Response, now_s: float) -> None:
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise _AuthError("the token response has no access_token") from None
        self._token = token
        refresh = body.get("refresh_token") if isinstance(body, dict) else None
        self._refresh_token = str(refresh) if refresh else self._refresh_token
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and expires_in > 0:
            self._token_expires_s = now_s + float(expires_in)
        else:
            exp = _jwt_expiry_s(token)
            self._token_expires_s = exp if exp is not None else now_s + _DEFAULT_TOKEN_LIFE_S

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token_value()}"}

    # ---------------------------------------------------------------- batches

    def submit(self, batch: OutboxBatch) -> None:
        """POST the batch; deliver the outcome (synchronously)."""
        self._deliver(self.post(batch))

    def post(self, batch: OutboxBatch) -> Delivery:
        """POST one batch and classify the answer."""
        try:
            headers = self._auth_headers()
        except _AuthError as exc:
            self.last_error = str(exc)
            log.error("%s", exc)
            return Delivery(batch, Outcome.RETRY, str(exc))
        try:
            response = self._post_batch(batch, headers, compress=self.compress)
            if self.compress and response.status_code in _MAYBE_NO_GZIP:
                # a cloud that does not take gzip parses the bytes as JSON and refuses them:
                # try once uncompressed; only if that works is compression switched off
                plain = self._post_batch(batch, headers, compress=False)
                if plain.status_code not in _MAYBE_NO_GZIP:
                    log.warning("the cloud refuses gzip bodies: sending uncompressed from now on")
                    self.compress = False
                response = plain
        except httpx.HTTPError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return Delivery(batch, Outcome.RETRY, self.last_error)
        outcome, detail = classify_response(response)
        if response.status_code == 401:
            self._token = None  # renew before the retry
            return Delivery(batch, Outcome.RETRY, detail, retry_after_s=0.0)
        if outcome is not Outcome.ACKED:
            self.last_error = detail
        return Delivery(batch, outcome, detail, retry_after_s(response))

    def _post_batch(
        self, batch: OutboxBatch, auth: dict[str, str], *, compress: bool
    ) -> httpx.Response:
        headers = {**auth, "Content-Type": "application/json"}
        body = batch.body
        if compress:
            headers["Content-Encoding"] = "gzip"
            body = batch.compressed()
        url = f"/api/v1/batteries/{self.battery_id}/telemetry"
        return self._request("POST", url, content=body, headers=headers)

    # ---------------------------------------------------------------- commands

    def request_commands(self) -> None:
        """Poll at the next tick."""
        self._next_poll_s = -math.inf

    def tick(self) -> None:
        """Poll pending commands when due."""
        now = self.clock.monotonic_s()
        if now < self._next_poll_s:
            return
        self._next_poll_s = now + self.command_poll_s
        try:
            headers = self._auth_headers()
            response = self._request(
                "GET",
                f"/api/v1/batteries/{self.battery_id}/commands",
                params={"pending": "true"},
                headers=headers,
            )
        except (_AuthError, httpx.HTTPError) as exc:
            self.last_error = f"command poll: {exc}"
            self._next_poll_s = now + min(self.command_poll_s, 30.0)
            return
        if response.status_code == 401:
            self._token = None
        if not response.is_success:
            self.last_error = f"command poll: HTTP {response.status_code}"
            return
        self._receive_commands(response.content)

    def status(self) -> dict[str, object]:
        """Reachability, last error, request count."""
        return {
            **super().status(),
            "reachable": self._reachable,
            "last_error": self.last_error,
            "requests": self.requests,
            "compress": self.compress,
            "auth_failures": self.auth_failures,
        }

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
