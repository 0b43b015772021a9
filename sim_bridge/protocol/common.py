"""What robot messages, control frames and telemetry records share: the protocol's name and
version (they live here once), the size limits, the error codes and ProtocolError."""

from __future__ import annotations

PROTOCOL = "tickmpc"
PROTOCOL_VERSION = 3
MAX_HEADER_BYTES = 16 * 1024
MAX_ARRAY_ELEMENTS = 4096
MAX_ROBOT_ID_BYTES = 32
MAX_TEXT_CHARS = 1024

ERROR_CODES = {
    "bad_frame": "a frame is not valid UTF-8 JSON, or frames and header disagree",
    "too_large": "a header or array exceeds the size limits",
    "bad_version": "the protocol name or version is not this one",
    "unknown_type": "the message type is not one of the protocol's",
    "bad_field": "a header field is missing, of the wrong type or out of range",
    "bad_array": "an array is missing, unexpected, or has the wrong dtype or shape",
    "nonfinite": "a number is NaN or infinite",
    "unknown_robot": "the robot has not said HELLO (or was forgotten): send HELLO again",
    "mismatch": "HELLO does not match what the controller serves (task, dims, bounds, period)",
    "unexpected": "a valid message that makes no sense now (e.g. ACTION sent to the controller)",
    "bad_setting": "a control request's setting was refused: unknown name or out of its range",
    "internal": "the controller failed on this message; it keeps serving",
}


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``code`` is one of ERROR_CODES; ``seq`` and ``robot``
    are what could be read of the offending message (for the ERROR reply), or -1 and ""."""

    def __init__(self, code: str, reason: str, *, seq: int = -1, robot: str = "") -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason, self.seq, self.robot = code, reason, seq, robot
