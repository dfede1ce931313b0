"""Run an OpenAI-compatible engine as a supervised child process.

``EmbeddedEngine`` starts the command in its own process group with its output appended to
a log file, waits until ``GET {base_url}/models`` answers, then runs one real completion
(a "smoke" request: an engine built for another CPU answers ``/models`` and dies with
SIGILL on its first matrix multiply). It restarts the child with backoff if it dies, and on
exit stops the whole group: SIGTERM, then SIGKILL after a grace period.

A crash that will only repeat (an illegal instruction, a crash during the smoke request)
is reported once, clearly, in ``failure`` and the log, and not restarted in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx

from bot.errors import EngineCrashError, ModelError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Deaths that a restart on the same machine can only repeat.
_CPU_SIGNALS = frozenset({signal.SIGILL, signal.SIGBUS})
_STABLE_SECONDS = 60.0  # a child that ran this long resets the restart count
_MAX_BACKOFF = 30.0


class EmbeddedEngine:
    """``async with EmbeddedEngine(cmd, env, base_url, start_timeout) as eng: ...``"""

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        base_url: str,
        start_timeout: float,
        *,
        log_path: Path | None = None,
        grace: float = 10.0,
        max_restarts: int = 5,
        probe_interval: float = 0.5,
        smoke_model: str | None = None,
    ) -> None:
        if not cmd:
            raise ValueError("empty engine command")
        self.cmd = list(cmd)
        self.env = dict(env)
        self.base_url = base_url.rstrip("/")
        self.start_timeout = start_timeout
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"engine-{os.getpid()}.log"
        self.grace = grace
        self.max_restarts = max_restarts
        self.probe_interval = probe_interval
        self.smoke_model = smoke_model  # served name for the smoke completion; None: skip
        self.restarts = 0
        self.started_in: float | None = None  # seconds the first start took
        self.failure: str | None = None  # why the engine was given up on, for /healthz
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def __aenter__(self) -> EmbeddedEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the child and wait until it serves; ModelError with its log on failure."""
        self._stopping = False
        _check_port_free(self.base_url)
        began = time.monotonic()
        self._proc = await self._launch()
        try:
            await self._wait_ready(self._proc)
            await self._smoke(self._proc)
        except ModelError as exc:
            self.failure = str(exc).split("\n")[0]
            await self._terminate()
            raise
        except BaseException:
            await self._terminate()
            raise
        self.failure = None
        self.started_in = time.monotonic() - began
        log.info("engine ready at %s in %.1f s (pid %d)", self.base_url, self.started_in, self.pid)
        self._supervisor = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def stop(self) -> None:
        """Stop supervising and terminate the child's process group. Idempotent."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._terminate()

    async def wait(self) -> None:
        """Return when supervision ends: the child kept dying and was given up on."""
        if self._supervisor is not None:
            await asyncio.wait({self._supervisor})  # unlike awaiting it, never cancels it

    def tail(self, lines: int = 25) -> str:
        """The last lines the child wrote to its log."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _launch(self) -> asyncio.subprocess.Process:
        with _open_log(self.log_path, self.cmd) as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.cmd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env={**os.environ, **self.env},
                    start_new_session=True,  # its own group: Ctrl-C goes to us, we stop it
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise ModelError(f"cannot start engine {self.cmd[0]}: {exc}") from exc
        log.info("engine started (pid %d), log: %s", proc.pid, self.log_path)
        return proc

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.start_timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if proc.returncode is not None:
                    code = proc.returncode
                    error = EngineCrashError if -code in _CPU_SIGNALS else ModelError
                    what = "crashes on this CPU" if error is EngineCrashError else "exited"
                    raise error(
                        f"the engine {what}: {describe_exit(code)} while starting; "
                        f"log {self.log_path}:\n{self.tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"{self.base_url}/models")
                    if response.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ModelError(
                        f"engine not ready after {self.start_timeout:.0f} s; "
                        f"log {self.log_path}:\n{self.tail()}"
                    )
                await asyncio.sleep(self.probe_interval)

    async def _smoke(self, proc: asyncio.subprocess.Process) -> None:
        """One real completion; the child dying meanwhile is a crash on this machine."""
        if self.smoke_model is None:
            return
        body = {
            "model": self.smoke_model,
            "messages": [{"role": "user", "content": "Say OK."}],
            "max_tokens": 1,
            "temperature": 0,
        }
        async with httpx.AsyncClient(timeout=self.start_timeout, trust_env=False) as client:
            request = asyncio.ensure_future(
                client.post(f"{self.base_url}/chat/completions", json=body)
            )
            died = asyncio.ensure_future(proc.wait())
            await asyncio.wait({request, died}, return_when=asyncio.FIRST_COMPLETED)
            if not died.done() and request.exception() is not None:
                await asyncio.wait({died}, timeout=2.0)  # the connection broke: did it die?
            if died.done():
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await request
                code = died.result()
                what = "crashes on this CPU" if -code in _CPU_SIGNALS else "died"
                raise EngineCrashError(
                    f"the engine {what}: {describe_exit(code)} on its first completion; "
                    "rebuild it for this machine (docs/models.md, 'The engine crashes on "
                    f"this CPU'). Log {self.log_path}:\n{self.tail(10)}"
                )
            died.cancel()
            try:
                response = request.result()
            except httpx.HTTPError as exc:
                raise ModelError(f"engine smoke completion failed: {exc!r}") from exc
            if response.status_code != 200:
                raise ModelError(
                    f"engine smoke completion failed: HTTP {response.status_code} "
                    f"{response.text[:200]}"
                )

    async def _supervise(self) -> None:
        failures = 0
        while True:
            assert self._proc is not None
            started = time.monotonic()
            code = await self._proc.wait()
            if self._stopping:
                return
            failures = 1 if time.monotonic() - started > _STABLE_SECONDS else failures + 1
            if code < 0 and -code in _CPU_SIGNALS:
                self._give_up(f"the engine crashes on this CPU: {describe_exit(code)}")
                return
            if failures > self.max_restarts:
                self._give_up(
                    f"the engine keeps crashing: {failures} deaths in a row, "
                    f"the last {describe_exit(code)}"
                )
                return
            delay = min(_MAX_BACKOFF, 2.0 ** (failures - 1))
            log.warning(
                "engine exited with status %s; restart %d/%d in %.0f s. Last log lines:\n%s",
                code,
                failures,
                self.max_restarts,
                delay,
                self.tail(10),
            )
            await asyncio.sleep(delay)
            await self._kill_group(self._proc.pid)
            try:
                self._proc = await self._launch()
            except ModelError as exc:
                log.error("engine restart failed; giving up: %s", exc)
                return
            self.restarts += 1
            try:
                await self._wait_ready(self._proc)
                await self._smoke(self._proc)
                log.info("engine restarted (pid %d)", self._proc.pid)
            except EngineCrashError as exc:
                self._give_up(str(exc).split("\n")[0])
                await self._terminate()
                return
            except ModelError as exc:
                log.error("engine restart failed: %s", exc)
                await self._terminate()

    def _give_up(self, why: str) -> None:
        """Report once, clearly, and stop restarting."""
        self.failure = why
        log.error("%s; not restarting it. Log %s:\n%s", why, self.log_path, self.tail())

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.grace)
            except TimeoutError:
                log.warning("engine ignored SIGTERM for %.0f s; killing it", self.grace)
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        await self._kill_group(proc.pid)

    async def _kill_group(self, pgid: int) -> None:
        """Give the group's stragglers (vLLM's engine core) a moment, then SIGKILL them."""
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if not _signal_group(pgid, 0):
                return
            await asyncio.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)


def describe_exit(code: int) -> str:
    """``-4`` -> "killed by SIGILL (illegal instruction)"; ``1`` -> "exit status 1"."""
    if code >= 0:
        return f"exit status {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by {sig.name} ({(signal.strsignal(sig) or sig.name).lower()})"


def _open_log(path: Path, cmd: Sequence[str]) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "ab")  # noqa: SIM115 - the caller closes it after the spawn
    out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {list(cmd)}\n".encode())
    out.flush()
    return out


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _check_port_free(base_url: str) -> None:
    """Refuse to start when something already listens there: it would pass the probe."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    host = "127.0.0.1" if host in {"0.0.0.0", ""} else host
    port = parts.port or 80
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            raise ModelError(f"cannot start the engine: {host}:{port} is already in use")


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bot dies without stopping us."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
