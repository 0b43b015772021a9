"""The MPC service: serves robot bridges over ZeroMQ, plans every tick, records transitions,
hot-swaps models and takes live settings (see docs/protocol.md and docs/architecture.md)."""

from controller.service.server import MPCService
from controller.service.settings import ServiceConfig

__all__ = ["MPCService", "ServiceConfig"]
