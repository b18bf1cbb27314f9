"""Errors of the cloud's storage and services, all under ``twin.errors.B2LError``.

    B2LError
     +-- NotFoundError          a battery, command, passport or twin that does not exist (404)
     +-- AlreadyExistsError     a battery id or sizing version already taken (409)
     +-- CloudError
          +-- BatchRejectedError      an uplink batch refused whole, with every reason (422)
          +-- WrongBatteryError       a device wrote a batch of another battery (403)
          +-- InvalidTransitionError  a command or lifecycle change the lifecycle forbids (409)
          +-- QueryLimitError         a history query that would return too many rows (422)
          +-- PayloadTooLargeError    a request body above the size limit (413)
          +-- UnsupportedMediaError   a body in a content type or encoding not taken (415)
     (twin) VersionConflictError      a desired-state patch based on a stale version (412)
             +-- ConcurrentUpdateError  a patch without If-Match that kept losing races (409)

A service raises one of these before it writes anything, or rolls its transaction back, so a
caller never sees half a write.
"""

from __future__ import annotations

from collections.abc import Sequence

from twin.errors import B2LError, VersionConflictError


class NotFoundError(B2LError, LookupError):
    """The thing asked for does not exist."""


class AlreadyExistsError(B2LError, ValueError):
    """A unique key (battery id, sizing timestamp) is already taken."""


class CloudError(B2LError):
    """Root of the cloud services' own errors."""


class BatchRejectedError(CloudError, ValueError):
    """An uplink batch was refused whole; ``reasons`` lists every problem found."""

    def __init__(self, battery_id: str, reasons: Sequence[str]) -> None:
        self.battery_id = battery_id
        self.reasons = list(reasons)
        shown = "; ".join(self.reasons[:10])
        more = f" (and {len(self.reasons) - 10} more)" if len(self.reasons) > 10 else ""
        super().__init__(f"batch of battery {battery_id!r} rejected: {shown}{more}")


class WrongBatteryError(CloudError, PermissionError):
    """A device credential tried to write the data of another battery."""


class InvalidTransitionError(CloudError, ValueError):
    """A command or lifecycle change that the lifecycle does not allow."""


class QueryLimitError(CloudError, ValueError):
    """A query would return more rows than allowed."""


class PayloadTooLargeError(CloudError, ValueError):
    """A request body (raw or decompressed) above the size the route accepts."""


class UnsupportedMediaError(CloudError, ValueError):
    """A request body in a content type or content encoding the route does not take."""


class ConcurrentUpdateError(VersionConflictError):
    """A desired-state patch without If-Match lost every retry to concurrent writers."""
