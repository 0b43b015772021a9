"""The dashboard's web server (aiohttp): the page, its live updates and its settings changes.

One asyncio loop, separate from the service (``tickmpc dashboard`` is its own process, so the
page costs the control loop one more telemetry subscriber and a status request every
``status_period_s``; measured in benchmarks/loop_latency.py). It reads:

- the telemetry socket (every tick record, into the :class:`~controller.dashboard.board.Board`);
- the control socket: ``status`` every ``status_period_s``, ``history`` every
  ``history_period_s``;
- the videos directory of a ``tickmpc run`` (its ``index.json``), when given.

Pages open a WebSocket (``/ws``) and get, every ``push_period_s``, what changed since their
last update. A settings change is ``POST /api/settings`` ``{"changes": {...}, "robot": ID?}``,
sent on as a control ``set``: the service validates it exactly as it does ``tickmpc tune``'s,
and its refusal comes back to the page with the service's code and reason.

Binding: loopback unless ``allow_remote``; a non-loopback bind also needs an access token,
since the page changes a running robot's controller. The token is taken from the address
(``?token=``, then kept in a cookie), or an ``Authorization: Bearer`` header. Without a token
(loopback), a request must name a loopback host (``Host``): a page of another site whose name
was made to resolve to 127.0.0.1 (DNS rebinding) names its own. A settings change, and the
WebSocket, must also come from the dashboard's own origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web

from controller.checks import check_int, check_number
from controller.dashboard.board import Board, Cursor
from controller.dashboard.controls import controls
from controller.service.control import request
from sim_bridge import protocol as p

if TYPE_CHECKING:
    from sim_bridge.curve import CurveClient

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
TOKEN_COOKIE = "tickmpc_token"
MIN_TOKEN_CHARS = 16
VIDEO_NAME = re.compile(r"^[\w.-]+\.(webm|mp4)$")
MAX_BODY_BYTES = 16 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to be loopback
        return False


@dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens and what it reads."""

    control: str
    """The service's control socket."""
    telemetry: str
    """The service's telemetry socket."""
    host: str = "127.0.0.1"
    """The address the page is served on (loopback unless ``allow_remote``)."""
    port: int = 8765
    """0: any free port (the address is printed)."""
    allow_remote: bool = False
    """Allow a non-loopback ``host`` (which needs ``token``)."""
    token: str | None = None
    """The access token every request must carry (required beyond loopback)."""
    videos: Path | None = None
    """A ``tickmpc run`` videos directory (with its index.json) whose videos the page plays."""
    status_period_s: float = 0.5
    """How often the service's ``status`` is read (s)."""
    history_period_s: float = 2.0
    """How often the service's ``history`` is read (s)."""
    push_period_s: float = 0.25
    """How often open pages get what changed: 4 updates a second."""

    def __post_init__(self) -> None:
        check_int("port", self.port, 0, 65535)
        if not is_loopback(self.host):
            if not self.allow_remote:
                raise ValueError(
                    f"host {self.host!r} is not loopback; pass --allow-remote to "
                    "serve the dashboard beyond this machine"
                )
            if self.token is None:
                raise ValueError(
                    f"host {self.host!r}: a dashboard beyond loopback needs an "
                    "access token (--token), since it can change the controller"
                )
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the access token must have at least {MIN_TOKEN_CHARS} characters")
        for name in ("status_period_s", "history_period_s", "push_period_s"):
            check_number(name, getattr(self, name), 0.0, 60.0, low_open=True)


class Dashboard:
    """The aiohttp application and the readers that feed its board."""

    def __init__(self, settings: DashboardConfig, curve: CurveClient | None = None) -> None:
        self.settings, self.curve = settings, curve
        self.board = Board()
        self._pages: set[web.WebSocketResponse] = set()
        self._setting = asyncio.Lock()
        """One settings change at a time, so they reach the service in the page's order."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._check_token], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/api/controls", self._controls)
        app.router.add_get("/api/state", self._state)
        app.router.add_post("/api/settings", self._set)
        app.router.add_get("/ws", self._page)
        app.router.add_get("/videos/{name}", self._video)
        app.cleanup_ctx.append(self._readers)
        app.on_shutdown.append(self._close_pages)
        return app

    # --- the readers ------------------------------------------------------------------------

    async def _readers(self, app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(self._read_telemetry()),
            asyncio.create_task(
                self._poll("status", self.settings.status_period_s, self.board.set_status)
            ),
            asyncio.create_task(
                self._poll("history", self.settings.history_period_s, self.board.set_history)
            ),
        ]
        if self.settings.videos is not None:
            tasks.append(asyncio.create_task(self._watch_videos(self.settings.videos)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_telemetry(self) -> None:
        while True:  # a failure costs a second of telemetry, not the page's plots for good
            try:
                await self._subscribe()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telemetry reader failed; subscribing again")
                await asyncio.sleep(1.0)

    async def _subscribe(self) -> None:
        context = zmq.asyncio.Context.instance()
        sub = context.socket(zmq.SUB)
        try:
            if self.curve is not None:
                self.curve.apply(sub)  # type: ignore[arg-type]  # an asyncio socket is one
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, p.TELEMETRY_TOPIC)
            sub.connect(self.settings.telemetry)
            while True:
                frames = await sub.recv_multipart()
                try:
                    self.board.add_tick(p.parse_telemetry(frames))
                except p.ProtocolError as exc:
                    self.board.refused_records += 1
                    if self.board.refused_records == 1:
                        log.warning("telemetry record refused (%s); counting the rest", exc)
        finally:
            sub.close()

    async def _poll(
        self, cmd: str, period_s: float, took: Callable[[dict[str, Any]], None]
    ) -> None:
        while True:
            try:
                reply = await self._control(cmd)
                reply.pop("v"), reply.pop("ok")
                took(reply)
            except TimeoutError as exc:
                if cmd == "status":
                    self.board.set_status(None, str(exc))
            except p.ProtocolError as exc:
                if cmd == "status":
                    self.board.set_status(None, str(exc))
                else:  # a service without this command: the page shows no history
                    log.debug("%s refused: %s", cmd, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. no socket to be had: said on the page, tried again
                log.exception("%s request failed", cmd)
                self.board.set_status(None, f"{cmd}: {exc!r}")
            await asyncio.sleep(period_s)

    async def _control(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return await asyncio.to_thread(
            request, self.settings.control, cmd, timeout_s=2.0, curve=self.curve, **fields
        )

    async def _watch_videos(self, directory: Path) -> None:
        index = directory / "index.json"
        while True:
            with contextlib.suppress(OSError, ValueError):
                videos = json.loads(index.read_text()) if index.exists() else []
                if isinstance(videos, list):
                    self.board.set_videos(
                        [
                            v
                            for v in videos
                            if isinstance(v, dict) and VIDEO_NAME.match(str(v.get("file", "")))
                        ]
                    )
            await asyncio.sleep(self.settings.history_period_s)

    # --- the page ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _controls(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"controls": controls(), "videos": self.settings.videos is not None}
        )

    async def _state(self, request: web.Request) -> web.Response:
        """Everything a new page would get first (also for scripts: ``curl .../api/state``)."""
        return web.json_response(self.board.update_for(Cursor()) or {})

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):  # browsers let any site open a WebSocket anywhere
            return _refused(403, "bad_request", "a page of another site")
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        self._pages.add(ws)
        sender = asyncio.create_task(self._push(ws))
        try:
            async for msg in ws:  # the page sends nothing; this waits for it to close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            self._pages.discard(ws)
        return ws

    async def _push(self, ws: web.WebSocketResponse) -> None:
        cursor = Cursor()
        while not ws.closed:
            update = self.board.update_for(cursor)
            if update is not None:
                try:
                    await ws.send_json(update)
                except (ConnectionResetError, RuntimeError):  # closed meanwhile
                    return
            await asyncio.sleep(self.settings.push_period_s)

    async def _close_pages(self, app: web.Application) -> None:
        for ws in list(self._pages):
            await ws.close()

    async def _set(self, request: web.Request) -> web.Response:
        """A settings change from the page, sent on as a control ``set``."""
        if request.content_type != "application/json":  # a cross-site form cannot send JSON
            return _refused(415, "bad_request", "send the change as application/json")
        if not _same_origin(request):
            origin = request.headers.get("Origin")
            return _refused(403, "bad_request", f"a change from another site ({origin})")
        try:
            body = await request.json()
        except ValueError:
            return _refused(400, "bad_request", "the body is not JSON")
        if not isinstance(body, dict) or set(body) - {"changes", "robot"}:
            return _refused(400, "bad_request", 'the body is {"changes": {...}, "robot": ID?}')
        fields = {k: body[k] for k in ("changes", "robot") if body.get(k) is not None}
        try:
            async with self._setting:
                reply = await self._control("set", **fields)
        except p.ProtocolError as exc:  # refused here as the service would, or by it
            return web.json_response({"ok": False, "code": exc.code, "error": exc.reason})
        except TimeoutError as exc:
            return _refused(503, "no_service", str(exc))
        return web.json_response({"ok": True, "settings": reply["settings"]})

    async def _video(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        listed = {v["file"] for v in self.board.videos}
        if self.settings.videos is None or name not in listed or not VIDEO_NAME.match(name):
            raise web.HTTPNotFound(text=f"no video {name!r}")
        return web.FileResponse(self.settings.videos / name)

    # --- access -----------------------------------------------------------------------------

    @web.middleware
    async def _check_token(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        token = self.settings.token
        if token is None:
            if _host_name(request.host) not in LOOPBACK_NAMES:
                return _refused(
                    403,
                    "bad_request",
                    f"this dashboard answers to loopback names only, not {request.host!r}",
                )
            return await handler(request)
        given = request.query.get("token")
        header = request.headers.get("Authorization", "")
        candidates = [
            given,
            request.cookies.get(TOKEN_COOKIE),
            header[7:] if header.startswith("Bearer ") else None,
        ]
        expected = token.encode()
        if not any(c is not None and hmac.compare_digest(c.encode(), expected) for c in candidates):
            return web.Response(
                status=401,
                text="this dashboard needs its access token: open "
                "the address tickmpc dashboard printed (…/?token=…)\n",
            )
        response = await handler(request)
        if given is not None and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8765`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(request: web.Request) -> bool:
    """A request a browser sent from the dashboard's own page (or not from a page at all)."""
    origin = request.headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == request.host


def _refused(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"ok": False, "code": code, "error": reason}, status=status)


async def serve(dashboard: Dashboard, on_ready: Callable[[str], None]) -> None:
    """Serve until cancelled; ``on_ready`` gets the page's address once it listens."""
    s = dashboard.settings
    runner = web.AppRunner(dashboard.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, s.host, s.port)
    await site.start()
    try:
        port = runner.addresses[0][1]
        host = f"[{s.host}]" if ":" in s.host else s.host
        url = f"http://{host}:{port}/" + (f"?token={s.token}" if s.token else "")
        on_ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
