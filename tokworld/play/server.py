"""The play server: a Starlette app on uvicorn, the page at `/`, one dream per WebSocket at `/ws`.

The protocol, JSON messages over `/ws`:

- page -> server: `{"type": "step", "action": I}`, `{"type": "restart"}`,
  `{"type": "sampling", "temperature": T, "top_k": K or null, "greedy": B}`,
  `{"type": "fork", "name": S}`, `{"type": "restore", "name": S}`, `{"type": "record"}`.
- server -> page: `hello` once (env id, actions with names and keys, no-op, fps, real), then a
  `frame` after each change (step, episode, action, reward, return, terminated, forks,
  sampling, `imagined` as a PNG data URL, with `--real` a `real` entry: frame, diff, psnr);
  `saved` after a recording; `error` with a one-line `message` for bad input, after which the
  dream goes on (`fatal: true` where there is no dream: the run cannot be loaded).

With `--fps N` a step message only sets the action of the next tick; ticks run N times a
second. A tab's session is saved when it closes and when the server stops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tokworld.errors import TokWorldError
from tokworld.play.session import PlaySession
from tokworld.play.world import PlayConfig, PlayWorld

log = logging.getLogger("tokworld.play")
PAGE = Path(__file__).with_name("page.html")


class Player:
    """The server's state: the shared `PlayWorld` (loaded on first need; a failed load is tried
    again by the next tab) and the open sessions."""

    def __init__(self, cfg: PlayConfig):
        self.cfg = cfg
        self._world: PlayWorld | None = None
        self._load_lock = threading.Lock()
        self.sessions: list[PlaySession] = []
        self.saved: list[dict] = []
        self._numbers = itertools.count()
        self._started = time.strftime("%Y%m%d-%H%M%S")

    def world(self) -> PlayWorld:
        with self._load_lock:
            if self._world is None:
                self._world = PlayWorld(self.cfg)
            return self._world

    def open(self) -> PlaySession:
        """A new session (its own dream) for a new tab."""
        world = self.world()
        n = next(self._numbers)
        with world.lock:  # a new engine sets up the shared model
            session = PlaySession(world, f"session-{self._started}-{n}", seed=self.cfg.seed + n)
        self.sessions.append(session)
        log.info("%s opened", session.name)
        return session

    def close(self, session: PlaySession) -> None:
        """Save `session` if it has unsaved steps, and forget it."""
        if session in self.sessions:
            self.sessions.remove(session)
        if session.unsaved:
            try:
                saved = session.record()
                self.saved.append(saved)
                log.info("%s saved to %s", session.name, saved["path"])
            except TokWorldError as e:
                log.error("%s could not be saved: %s", session.name, e)
        session.close()

    def close_all(self) -> None:
        """Save and forget every open session (when the server stops)."""
        if self._world is None:
            return
        with self._world.lock:
            for session in list(self.sessions):
                self.close(session)


def create_app(cfg: PlayConfig) -> Starlette:
    """The play app for `cfg`; `app.state.player` holds its `Player`."""
    player = Player(cfg)

    async def run(fn: Callable, *args):
        """`fn(*args)` in a worker thread, one dream at a time (the models are shared)."""

        def locked():
            with player.world().lock:
                return fn(*args)

        return await anyio.to_thread.run_sync(locked)

    async def page(request):
        return FileResponse(PAGE, media_type="text/html")

    async def play_socket(ws: WebSocket):
        await ws.accept()
        try:
            session = await anyio.to_thread.run_sync(player.open)
        except Exception as e:  # the run cannot be loaded: say why, keep serving
            text = str(e) if isinstance(e, TokWorldError) else f"{type(e).__name__}: {e}"
            log.error("cannot open a dream: %s", text)
            await ws.send_json({"type": "error", "fatal": True, "message": text})
            await ws.close()
            return
        send_lock = asyncio.Lock()

        async def send(message: dict | None):
            if message is not None:
                async with send_lock:
                    await ws.send_json(message)

        async def answer(fn: Callable, *args):
            try:
                reply = await run(fn, *args)
            except TokWorldError as e:
                log.warning("%s: %s", session.name, e)
                reply = {"type": "error", "message": str(e)}
            except Exception as e:  # a bug must not end the server or the dream: report it
                log.exception("%s: internal error", session.name)
                reply = {"type": "error", "message": f"internal error: {type(e).__name__}: {e}"}
            await send(reply)

        async def tick():
            while True:
                await asyncio.sleep(1 / cfg.fps)
                await answer(session.tick)

        ticker = None
        try:
            await send(session.hello())
            await answer(session.restart)
            if cfg.fps:
                ticker = asyncio.create_task(tick())
            while (message := await ws.receive())["type"] != "websocket.disconnect":
                await answer(session.handle_text, message.get("text"))
        except WebSocketDisconnect:
            pass
        finally:
            if ticker is not None:  # stopped, and its end (a send to a closed socket) collected
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            await run(player.close, session)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await anyio.to_thread.run_sync(player.close_all)

    app = Starlette(
        routes=[Route("/", page), WebSocketRoute("/ws", play_socket)], lifespan=lifespan
    )
    app.state.player = player
    return app


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), or a TokWorldError saying why not."""
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise TokWorldError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _server(cfg: PlayConfig) -> tuple[uvicorn.Server, Starlette, socket.socket, str]:
    sock = _listen(cfg.host, cfg.port)
    app = create_app(cfg)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    host, port = sock.getsockname()[:2]
    return uvicorn.Server(config), app, sock, f"http://{host}:{port}/"


def _log_to_stderr() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("tokworld play: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def serve(cfg: PlayConfig) -> dict:
    """Serve until Ctrl-C; then save the open sessions. Returns the URL and the saves."""
    _log_to_stderr()
    server, app, sock, url = _server(cfg)
    try:
        app.state.player.world()
    except TokWorldError as e:  # the page shows it too; a fixed run loads on the next tab
        log.error("%s", e)
    print(
        f"tokworld play: open {url} (Ctrl-C to stop; sessions go to {cfg.sessions_dir})", flush=True
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stopped gracefully, then re-raised the signal
        pass
    return {"url": url, "sessions": app.state.player.saved}


@contextmanager
def serving(cfg: PlayConfig) -> Iterator[tuple[str, Starlette]]:
    """Serve `cfg` in a background thread (tests, benchmarks): yields (URL, app); stops the
    server, saving its sessions, when the block ends."""
    server, app, sock, url = _server(cfg)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise TokWorldError(f"the play server at {url} did not start")
            time.sleep(0.02)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
