"""The one root of every error the twin core raises.

    B2LError
     +-- TwinValidationError     a record, parameter set or document breaks a rule of the data model
     |    +-- VersionConflictError   a twin update based on a stale version (If-Match)
     +-- CodecError              bytes that are not a valid frame of a wire protocol
     |    +-- CanCodecError      a CAN frame that does not decode with the project's DBC
     |    +-- SerialCodecError   a Pillar 1 serial frame: framing, CRC, version, type or length
     |    +-- TopicError         an MQTT topic outside the b2l/v1 tree
     +-- ConfigError             a configuration file or value that cannot be used

Callers that take input from the outside world (a bus, a port, a broker, an HTTP body) catch
``B2LError`` (or one branch of it), count the reject and go on; anything else is a bug.
"""

from __future__ import annotations


class B2LError(Exception):
    """Root of all b2l errors."""


class TwinValidationError(B2LError, ValueError):
    """A value breaks a rule of the data model (physically impossible, out of topology, ...)."""


class VersionConflictError(TwinValidationError):
    """An update was based on another version of the twin document than the current one."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"the twin is at version {actual}, the update was based on {expected}")
        self.expected = expected
        self.actual = actual


class CodecError(B2LError, ValueError):
    """Bytes that are not a valid frame of one of the wire protocols."""


class CanCodecError(CodecError):
    """A CAN frame (or signal set) that does not encode/decode with the project's DBC."""


class SerialCodecError(CodecError):
    """A Pillar 1 serial frame with bad framing, CRC, version, type or length."""


class TopicError(CodecError):
    """An MQTT topic that is not one of the b2l/v1 topics."""


class ConfigError(B2LError, ValueError):
    """A configuration file or value that cannot be used."""
