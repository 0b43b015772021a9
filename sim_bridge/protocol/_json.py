"""JSON on the wire, for message headers, control frames and telemetry records alike: one
object, no repeated key, no NaN or Infinity, and the version a JSON frame says it speaks."""

from __future__ import annotations

import json
from typing import Any

from sim_bridge.protocol.common import PROTOCOL_VERSION, ProtocolError
from sim_bridge.protocol.values import _is_int


def _json_object(raw: bytes, what: str, max_bytes: int | None) -> dict[str, Any]:
    """``raw`` as one UTF-8 JSON object with no repeated key and no NaN or Infinity."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise ProtocolError("too_large", f"{what} is {len(raw)} bytes > {max_bytes}")
    try:
        obj = json.loads(
            raw.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
        )
    except ProtocolError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_frame", f"{what} is not UTF-8 JSON: {exc}") from None
    except ValueError as exc:  # Python refuses integer literals of more than 4300 digits
        raise ProtocolError("too_large", f"{what} holds a huge number: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_frame", f"{what} must be a JSON object")
    return obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON allows a repeated key and Python keeps the last: two readers could disagree.
    obj = dict(pairs)
    if len(obj) < len(pairs):
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise ProtocolError("bad_frame", f"a JSON object repeats the key(s) {repeated}")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ProtocolError("nonfinite", f"JSON holds {name}")


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:
        raise ProtocolError("nonfinite", f"cannot send {exc}") from None


def _check_version(version: Any, what: str) -> None:
    """Refuse (bad_version) the ``"v"`` of a control frame or telemetry record that is not
    PROTOCOL_VERSION."""
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version", f'{what}: "v" is {version!r}, this side speaks {PROTOCOL_VERSION}'
        )
