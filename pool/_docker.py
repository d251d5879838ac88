"""The Docker Engine API, spoken directly over its unix socket with Trio.

This is the only module in Cinch that talks to Docker.  Ordinary calls go
through one pooled httpx client (keep-alive connections, no thread per call);
attaching to a container's stdio upgrades a raw Trio socket, because the
attach protocol hijacks the HTTP connection.
"""

from __future__ import annotations

import json
import os
import select
import struct
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from typing import Any

import httpx
import trio

from ._errors import Conflict, EngineError, EngineUnavailable, NotFound

API_VERSION = "v1.41"  # Docker 20.10; newer engines still answer it.
DEFAULT_SOCKET = "/var/run/docker.sock"


def socket_path_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The engine socket named by ``DOCKER_HOST`` (``unix://`` only), or the default."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    raise ValueError(f"DOCKER_HOST={host!r}: only unix:// sockets are supported")


def _raise_for(status: int, body: bytes) -> None:
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    if status == 404:
        raise NotFound(status, message)
    if status == 409:
        raise Conflict(status, message)
    raise EngineError(status, message)


class AttachStream:
    """A container's stdio after ``attach``: raw bytes in, demultiplexed frames out.

    The engine prefixes every chunk of output with an 8-byte header (stream
    type, three zero bytes, big-endian length) when the container has no TTY.
    """

    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        self._stream = stream
        self._buf = bytearray(buffered)
        self._eof = False

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise EngineUnavailable(f"attach stream broken: {exc}") from exc

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            chunk = b""
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def receive_chunk(self) -> tuple[int, bytes] | None:
        """The next ``(stream, data)`` chunk (1 = stdout, 2 = stderr), or None at EOF."""
        while len(self._buf) < 8:
            if not await self._fill():
                return None
        kind = self._buf[0]
        (length,) = struct.unpack(">I", self._buf[4:8])
        while len(self._buf) < 8 + length:
            if not await self._fill():
                return None
        data = bytes(self._buf[8 : 8 + length])
        del self._buf[: 8 + length]
        return kind, data

    def readable_nowait(self) -> bool:
        """True if data or EOF is waiting: for an idle sandbox, a sign it has died."""
        if self._eof or self._buf:
            return True
        poller = select.poll()
        poller.register(self._stream.socket.fileno(), select.POLLIN | select.POLLHUP)
        return bool(poller.poll(0))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


class DockerClient:
    """A small async client for the parts of the Engine API that Cinch uses."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url=f"http://docker/{API_VERSION}",
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    async def __aenter__(self) -> DockerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        ok: Iterable[int] = (200, 201, 204, 304),
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                json=json_body,
                content=content,
                headers=headers,
                timeout=timeout_s if timeout_s is not None else self._timeout_s,
            )
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineUnavailable(f"docker engine at {self.socket_path}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise EngineUnavailable(f"docker engine timed out on {method} {path}") from exc
        if response.status_code not in ok:
            _raise_for(response.status_code, response.content)
        return response

    # -- engine ---------------------------------------------------------------

    async def ping(self) -> None:
        await self._request("GET", "/_ping", timeout_s=5)

    async def info(self) -> dict[str, Any]:
        return dict((await self._request("GET", "/info")).json())

    async def version(self) -> dict[str, Any]:
        return dict((await self._request("GET", "/version")).json())

    # -- containers -----------------------------------------------------------

    async def create_container(self, config: Mapping[str, Any]) -> str:
        response = await self._request("POST", "/containers/create", json_body=config)
        return str(response.json()["Id"])

    async def start(self, container_id: str) -> None:
        await self._request("POST", f"/containers/{container_id}/start")

    async def pause(self, container_id: str) -> None:
        await self._request("POST", f"/containers/{container_id}/pause")

    async def unpause(self, container_id: str) -> None:
        await self._request("POST", f"/containers/{container_id}/unpause")

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        await self._request("POST", f"/containers/{container_id}/kill", params={"signal": signal})

    async def remove(self, container_id: str, *, force: bool = True, timeout_s: float = 20) -> None:
        await self._request(
            "DELETE",
            f"/containers/{container_id}",
            params={"force": "1" if force else "0", "v": "1"},
            timeout_s=timeout_s,
        )

    async def inspect(self, container_id: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/containers/{container_id}/json")).json())

    async def wait(self, container_id: str, *, timeout_s: float = 30) -> int:
        response = await self._request(
            "POST", f"/containers/{container_id}/wait", timeout_s=timeout_s
        )
        return int(response.json().get("StatusCode", -1))

    async def list_containers(self, labels: Iterable[str] = ()) -> list[dict[str, Any]]:
        filters = json.dumps({"label": list(labels)})
        response = await self._request(
            "GET", "/containers/json", params={"all": "1", "filters": filters}
        )
        return list(response.json())

    async def attach(self, container_id: str) -> AttachStream:
        """Attach to stdin, stdout and stderr; call before ``start`` to miss nothing."""
        try:
            sock = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise EngineUnavailable(f"docker engine at {self.socket_path}: {exc}") from exc
        request = (
            f"POST /{API_VERSION}/containers/{container_id}/attach"
            "?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        try:
            await sock.send_all(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await sock.receive_some(4096)
                if not chunk:
                    raise EngineUnavailable("docker engine closed the attach connection")
                head += chunk
                if len(head) > 65536:
                    raise EngineUnavailable("docker engine sent an oversized attach header")
        except BaseException:
            await sock.aclose()
            raise
        header, _, rest = head.partition(b"\r\n\r\n")
        status_line = header.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status not in (101, 200):
            await sock.aclose()
            _raise_for(status, rest)
        return AttachStream(sock, rest)

    # -- events -----------------------------------------------------------------

    async def events(
        self,
        filters: Mapping[str, list[str]],
        *,
        on_connected: Callable[[], object] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Stream engine events matching ``filters`` until cancelled or the engine goes.

        ``on_connected`` is called once the engine has accepted the stream: events
        arrive only when something happens, so the first one can be long in coming.
        """
        try:
            async with self._http.stream(
                "GET",
                "/events",
                params={"filters": json.dumps(dict(filters))},
                timeout=httpx.Timeout(self._timeout_s, read=None),
            ) as response:
                if response.status_code != 200:
                    _raise_for(response.status_code, await response.aread())
                if on_connected is not None:
                    on_connected()
                async for line in response.aiter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineUnavailable(f"docker event stream: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise EngineUnavailable("docker event stream timed out") from exc

    # -- images -------------------------------------------------------------------

    async def image_inspect(self, name: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/images/{name}/json")).json())

    async def image_exists(self, name: str) -> bool:
        try:
            await self.image_inspect(name)
        except NotFound:
            return False
        return True

    async def import_image(
        self, tar_stream: AsyncIterator[bytes], repo: str, tag: str, changes: tuple[str, ...] = ()
    ) -> None:
        """Import a root filesystem tarball as ``repo:tag`` (``docker import``)."""
        params: list[tuple[str, str]] = [("fromSrc", "-"), ("repo", repo), ("tag", tag)]
        params += [("changes", c) for c in changes]
        response = await self._request(
            "POST",
            "/images/create",
            params=params,
            content=tar_stream,
            headers={"Content-Type": "application/x-tar"},
            timeout_s=600,
        )
        for line in response.text.splitlines():
            if line.strip() and "error" in json.loads(line):
                raise EngineError(500, json.loads(line)["error"])

    async def build(
        self,
        context_tar: bytes | AsyncIterable[bytes],
        tag: str,
        labels: Mapping[str, str],
        build_args: Mapping[str, str],
    ) -> AsyncIterator[str]:
        """Build an image from a tarred context; yields the engine's progress lines.

        ``RUN`` steps have no network (``networkmode=none``): what a build needs
        comes in its context, fetched and checked on the host.
        """
        params = {
            "t": tag,
            "labels": json.dumps(dict(labels)),
            "buildargs": json.dumps(dict(build_args)),
            "rm": "1",
            "forcerm": "1",
            "networkmode": "none",
        }
        try:
            async with self._http.stream(
                "POST",
                "/build",
                params=params,
                content=context_tar,
                headers={"Content-Type": "application/x-tar"},
                timeout=httpx.Timeout(600),
            ) as response:
                if response.status_code != 200:
                    _raise_for(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise EngineError(500, item["error"])
                    if item.get("stream", "").strip():
                        yield item["stream"].rstrip()
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineUnavailable(f"docker build: {exc}") from exc

    async def list_images(self, labels: Iterable[str] = ()) -> list[dict[str, Any]]:
        filters = json.dumps({"label": list(labels)})
        return list(
            (await self._request("GET", "/images/json", params={"filters": filters})).json()
        )

    async def remove_image(self, name: str) -> None:
        await self._request("DELETE", f"/images/{name}", params={"noprune": "0"})
