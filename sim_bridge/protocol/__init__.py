"""The tickmpc wire protocol: messages between robot bridges and the controller, control
requests and telemetry records.

A message is a ZeroMQ multipart message: one UTF-8 JSON header frame, then one raw frame per
array, little-endian, C order, described in the header (``"arrays": [{"name", "dtype",
"shape"}]``). Nothing is unpickled; every field is checked against the schema below, so a
malformed message raises :class:`ProtocolError` with a machine-readable code and a reason, never
anything else. Control requests, their replies and telemetry records are single JSON objects,
checked the same way and versioned with the same PROTOCOL_VERSION. This package is pure (numpy
and the standard library only): bridges, the controller and tests share it, and
``docs/protocol.md`` is its authoritative description (a test checks that the two agree).

Its parts, all re-exported here (use them as ``protocol.<name>``): ``common`` the name,
version, limits, error codes and ProtocolError; ``values`` the field kinds and their checks;
``messages`` the message types, their schema and Message; ``frames`` a message's encode and
decode; ``control`` the control socket's requests and replies; ``telemetry`` its records.
"""

from sim_bridge.protocol.common import (
    ERROR_CODES,
    MAX_ARRAY_ELEMENTS,
    MAX_HEADER_BYTES,
    MAX_ROBOT_ID_BYTES,
    MAX_TEXT_CHARS,
    PROTOCOL,
    PROTOCOL_VERSION,
    ProtocolError,
)
from sim_bridge.protocol.control import (
    CONTROL_COMMANDS,
    CONTROL_ERROR_CODES,
    CONTROL_FIELDS,
    HISTORY_FIELDS,
    ROBOT_STATUS_FIELDS,
    STATUS_FIELDS,
    control_error,
    control_reply,
    control_request,
    parse_control_reply,
    parse_control_request,
)
from sim_bridge.protocol.frames import ARRAY_DTYPES, decode, encode
from sim_bridge.protocol.messages import _COMMON as _COMMON
from sim_bridge.protocol.messages import (
    ACTION,
    ARRAYS,
    BOUNDS_ATOL,
    BOUNDS_RTOL,
    DESCRIBE,
    EPISODE,
    ERROR,
    FIELDS,
    HEARTBEAT,
    HELLO,
    PERIOD_RTOL,
    SPEC,
    SPEC_ARRAYS,
    SPEC_FIELDS,
    STATE,
    WELCOME,
    Message,
    error_reply,
    make,
    spec_of,
)
from sim_bridge.protocol.telemetry import (
    TELEMETRY_FIELDS,
    TELEMETRY_TOPIC,
    parse_telemetry,
    telemetry_record,
)
from sim_bridge.protocol.values import VALUE_KINDS, robot_id_ok
from sim_bridge.protocol.values import _check_value as _check_value

# _COMMON and _check_value, private, are imported too: the tests that hold docs/protocol.md
# to the code read them.
__all__ = [
    "ACTION",
    "ARRAYS",
    "ARRAY_DTYPES",
    "BOUNDS_ATOL",
    "BOUNDS_RTOL",
    "CONTROL_COMMANDS",
    "CONTROL_ERROR_CODES",
    "CONTROL_FIELDS",
    "DESCRIBE",
    "EPISODE",
    "ERROR",
    "ERROR_CODES",
    "FIELDS",
    "HEARTBEAT",
    "HELLO",
    "HISTORY_FIELDS",
    "MAX_ARRAY_ELEMENTS",
    "MAX_HEADER_BYTES",
    "MAX_ROBOT_ID_BYTES",
    "MAX_TEXT_CHARS",
    "PERIOD_RTOL",
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "ROBOT_STATUS_FIELDS",
    "SPEC",
    "SPEC_ARRAYS",
    "SPEC_FIELDS",
    "STATE",
    "STATUS_FIELDS",
    "TELEMETRY_FIELDS",
    "TELEMETRY_TOPIC",
    "VALUE_KINDS",
    "WELCOME",
    "Message",
    "ProtocolError",
    "control_error",
    "control_reply",
    "control_request",
    "decode",
    "encode",
    "error_reply",
    "make",
    "parse_control_reply",
    "parse_control_request",
    "parse_telemetry",
    "robot_id_ok",
    "spec_of",
    "telemetry_record",
]
