"""The SQS guard: a reverse proxy in front of ElasticMQ that lets through only requests signed with Lambent's key.

ElasticMQ checks no credentials, and functions share the host's network: anything on the host could list, read,
delete and send the messages of every queue. The guard verifies each request's AWS Signature Version 4 (boto3
signs SQS's JSON protocol and its query protocol alike) against ONE key, access key id `lambent` (`--key-id`)
with the secret in the environment variable LAMBENT_SQS_GUARD_SECRET (never argv: /proc/<pid>/cmdline is
world-readable), using the gateway's own verifier. Unsigned, wrongly signed and body-unsigned requests get SQS's
own error answers, so boto3 raises a ClientError that says what to configure; the others are forwarded unchanged
to ElasticMQ and its answer streamed back.

Two ways to run it:

    python -m runtime.sqsguard --listen 0.0.0.0:9324 --upstream http://elasticmq:9324
        in front of an ElasticMQ that only the guard can reach (docker-compose.yml: an `internal` network);

    python -m runtime.sqsguard --listen 127.0.0.1:PORT --namespace --pid-file F -- java ... Main
        on a host (scripts/elasticmq.sh): the guard binds its listening socket on the host's loopback, then moves
        into a network namespace of its own and starts ElasticMQ there as its child, bound to 127.0.0.1:9324 of
        that namespace, which no process of the host's namespace can reach. The child dies with the guard, even
        by kill -9 (PR_SET_PDEATHSIG); SIGTERM stops the child (SIGTERM, then SIGKILL) and then the guard.

and `python -m runtime.sqsguard --probe URL`: exit 0 when URL is a guard that answers a ListQueues signed with the
secret and refuses an unsigned one (scripts/elasticmq.sh's readiness check).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from typing import Any, Awaitable, Callable, Iterable
from xml.sax.saxutils import escape

import httpx
from starlette.datastructures import Headers

from .config import AuthConfig, AuthKey, Config
from .auth import AuthError, Authenticator

log = logging.getLogger("lambent.sqsguard")

SECRET_ENV = "LAMBENT_SQS_GUARD_SECRET"
KEY_ID = "lambent"
INNER_PORT = 9324                      # ElasticMQ's port inside the guard's network namespace
MAX_BODY_BYTES = 4 * 1024 * 1024       # a 1 MiB SQS request percent-encoded (query protocol) still fits
UPSTREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=30.0, pool=30.0)   # long polls: 20 s at most
STOP_TIMEOUT_S = 20.0                  # ElasticMQ's grace after SIGTERM, then SIGKILL
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade", "host", "content-length"})
_HOW_TO = ("sign SQS requests with access key id '{key}' and the guard's secret: set sqs.access_key_id and "
           "sqs.secret_access_key in Lambent's config (LAMBENT_SQS__ACCESS_KEY_ID, LAMBENT_SQS__SECRET_ACCESS_KEY; "
           "`scripts/elasticmq.sh secret STATE_DIR` prints the secret)")
# The gateway verifier's codes, as SQS names them (the query protocol's codes; the JSON protocol carries the same
# in x-amzn-query-error, which botocore reads for SQS).
_SQS_CODES = {"UnrecognizedClientException": "InvalidClientTokenId", "InvalidToken": "InvalidClientTokenId",
              "InvalidSignatureException": "SignatureDoesNotMatch",
              "IncompleteSignatureException": "IncompleteSignature", "RequestExpired": "RequestExpired"}

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class Guard:
    """The ASGI app: check the signature, forward to `upstream`, stream the answer back."""

    def __init__(self, upstream: str, secret: str, *, key_id: str = KEY_ID) -> None:
        self.upstream = upstream.rstrip("/")
        self.key_id = key_id
        config = Config(auth=AuthConfig(keys=(AuthKey(id=key_id, secret_env=SECRET_ENV, role="admin"),)))
        self.auth = Authenticator(config, {SECRET_ENV: secret})
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # One pooled HTTP/1.1 client for every request: a connection per request would cost a TCP
                # handshake each, and ElasticMQ keeps connections alive.
                self.client = httpx.AsyncClient(base_url=self.upstream, timeout=UPSTREAM_TIMEOUT,
                                                limits=httpx.Limits(max_connections=256,
                                                                    max_keepalive_connections=64))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        json_protocol = "x-amz-target" in headers
        if scope["method"] == "GET" and scope["path"] == "/healthz":
            await self._healthz(send)
            return
        try:
            body = await _read_body(receive, headers)
            self._check(scope, headers, body)
        except Refusal as refusal:
            await _send_error(send, refusal, json_protocol=json_protocol)
            return
        await self._forward(scope, headers, body, send, json_protocol=json_protocol)

    def _check(self, scope: dict[str, Any], headers: Headers, body: bytes) -> None:
        """Raise Refusal unless the request carries a valid SigV4 signature of the guard's key over its body."""
        client = scope.get("client")
        try:
            principal = self.auth.identify(method=scope["method"], path=scope["raw_path"].decode("latin-1"),
                                           query=scope["query_string"].decode("latin-1"), headers=headers,
                                           body=body, client_host=client[0] if client else None)
        except AuthError as error:
            code = _SQS_CODES.get(error.code, "InvalidClientTokenId")
            message = error.message
            if error.code == "UnrecognizedClientException":     # the verifier's text speaks of auth.keys
                message = f"the access key id '{(error.key_id or '')[:64]}' is not the guard's"
            raise Refusal(400 if code == "IncompleteSignature" else 403, code, f"{message}: {self._how_to()}") from None
        if principal.role == "anonymous":
            log.warning("request refused: not signed", extra={"client": client[0] if client else None})
            raise Refusal(403, "MissingAuthenticationToken",
                          f"the request is not signed (no Authorization header): {self._how_to()}")
        if principal.via != "sigv4":
            raise Refusal(403, "InvalidClientTokenId", f"only AWS Signature Version 4 is accepted: {self._how_to()}")
        if headers.get("x-amz-content-sha256", "").strip() == "UNSIGNED-PAYLOAD":
            # Over plain HTTP an unsigned body could be changed in flight by anyone who replays the signature.
            raise Refusal(400, "IncompleteSignature",
                          f"the body must be signed (X-Amz-Content-SHA256 UNSIGNED-PAYLOAD): {self._how_to()}")

    def _how_to(self) -> str:
        return _HOW_TO.format(key=self.key_id)

    async def _forward(self, scope: dict[str, Any], headers: Headers, body: bytes, send: Send, *,
                       json_protocol: bool) -> None:
        assert self.client is not None, "the lifespan startup makes the client"
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        request = self.client.build_request(
            scope["method"], target, content=body,
            headers=[(name, value) for name, value in headers.raw if name.decode("latin-1").lower() not in _HOP_BY_HOP])
        try:
            answer = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("ElasticMQ cannot be reached: %s", exc, extra={"upstream": self.upstream})
            await _send_error(send, Refusal(503, "ServiceUnavailable",
                                            f"the queue server behind the guard cannot be reached "
                                            f"({type(exc).__name__}); retry shortly"), json_protocol=json_protocol)
            return
        try:
            await send({"type": "http.response.start", "status": answer.status_code,
                        "headers": [(name, value) for name, value in answer.headers.raw
                                    if name.decode("latin-1").lower() not in _HOP_BY_HOP
                                    or name.lower() == b"content-length"]})
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await answer.aclose()

    async def _healthz(self, send: Send) -> None:
        """`ok` when the guard runs and its ElasticMQ answers ListQueues; unauthenticated, and it says no more."""
        assert self.client is not None
        try:
            answer = await self.client.get("/?Action=ListQueues", timeout=5.0)
            healthy = answer.status_code == 200
        except httpx.HTTPError:
            healthy = False
        text = b"ok\n" if healthy else b"the queue server behind the guard does not answer\n"
        await send({"type": "http.response.start", "status": 200 if healthy else 503,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})


async def _read_body(receive: Receive, headers: Headers) -> bytes:
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refusal(413, "RequestTooLarge", f"the request body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "RequestAborted", "the client went away before the body ended")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refusal(413, "RequestTooLarge", f"the request body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_error(send: Send, refusal: Refusal, *, json_protocol: bool) -> None:
    """SQS's error answer: JSON with `__type` and x-amzn-query-error, or the query protocol's XML ErrorResponse."""
    kind = "Sender" if refusal.status < 500 else "Receiver"
    if json_protocol:
        body = json.dumps({"__type": f"com.amazon.coral.service#{refusal.code}", "message": refusal.message}).encode()
        headers = [(b"content-type", b"application/x-amz-json-1.0"),
                   (b"x-amzn-query-error", f"{refusal.code};{kind}".encode())]
    else:
        body = (f'<?xml version="1.0"?><ErrorResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
                f"<Error><Type>{kind}</Type><Code>{refusal.code}</Code><Message>{escape(refusal.message)}</Message>"
                f"<Detail/></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
                ).encode()
        headers = [(b"content-type", b"text/xml")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the host's variant: a network namespace

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter_new_network_namespace() -> None:
    """Move this process into a network namespace of its own (only loopback, brought up) — Python 3.11 has no
    os.unshare. Must run before any thread starts: a namespace is per thread, and threads inherit it."""
    if _libc().unshare(_CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare(CLONE_NEWNET) failed: {os.strerror(code)} (a network namespace needs root or "
                            "CAP_SYS_ADMIN; without one, LAMBENT_SQS_UNGUARDED=1 runs ElasticMQ unguarded)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(probe, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def start_child(command: list[str], *, cwd: str | None, log_file: str | None) -> subprocess.Popen[bytes]:
    """Start ElasticMQ; it gets SIGKILL when the guard dies, however it dies (PR_SET_PDEATHSIG)."""
    parent = os.getpid()

    def die_with_parent() -> None:
        if _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)       # the guard died before prctl took effect: do not outlive it

    output = open(log_file, "ab") if log_file else None
    try:
        return subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT if output else None, preexec_fn=die_with_parent,
                                env={k: v for k, v in os.environ.items() if k != SECRET_ENV})
    finally:
        if output:
            output.close()


def stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("ElasticMQ (pid %d) still runs %.0f s after SIGTERM: SIGKILL", child.pid, STOP_TIMEOUT_S)
        child.kill()
        child.wait(10)


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"error: --listen takes HOST:PORT, not {listen!r}")
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and accepted ones
    # copy this one's. Without it, Nagle holds each answer's body until the client's delayed ACK (40 ms a request).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            print(f"error: {listen}: Address already in use", file=sys.stderr)
            raise SystemExit(3) from None
        raise
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


async def serve(guard: Guard, sock: socket.socket, child: subprocess.Popen[bytes] | None) -> int:
    import uvicorn

    # Keep-alive past boto3's idle pool; on SIGTERM, in-flight requests (a long poll: 20 s) get 3 s, then the
    # guard goes on stopping ElasticMQ: clients retry.
    config = uvicorn.Config(guard, log_level="warning", access_log=False, timeout_keep_alive=75, lifespan="on",
                            timeout_graceful_shutdown=3, server_header=False, date_header=False)
    server = uvicorn.Server(config)
    outcome = {"rc": 0}

    async def watch_child() -> None:
        while child is not None and not server.should_exit:
            if child.poll() is not None:
                log.error("ElasticMQ exited (%s): the guard stops too", child.returncode)
                outcome["rc"] = 1
                server.should_exit = True
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_child())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
    return outcome["rc"]


# ---------------------------------------------------------------- the readiness probe

def probe(url: str, secret: str, key_id: str) -> int:
    """0 when `url` answers a signed ListQueues and refuses an unsigned one."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config as BotoConfig

    boto = BotoConfig(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    signed = boto3.client("sqs", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                          aws_secret_access_key=secret, config=boto)
    try:
        signed.list_queues()
        answer = httpx.post(url, data={"Action": "ListQueues"}, timeout=5.0)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, httpx.HTTPError) as exc:
        print(f"probe: {url}: {exc}", file=sys.stderr)
        return 1
    if answer.status_code != 403:
        print(f"probe: {url} answered an unsigned ListQueues with {answer.status_code}: not a guard", file=sys.stderr)
        return 1
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.sqsguard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", help="HOST:PORT to serve on")
    parser.add_argument("--upstream", help="ElasticMQ's URL (without --namespace)")
    parser.add_argument("--namespace", action="store_true",
                        help="run the command after -- (ElasticMQ, bound to 127.0.0.1:9324) in a network namespace "
                             "of its own, reachable only through the guard")
    parser.add_argument("--pid-file", help="with --namespace: write ElasticMQ's PID there")
    parser.add_argument("--child-log", help="with --namespace: append ElasticMQ's output there")
    parser.add_argument("--child-cwd", help="with --namespace: ElasticMQ's working directory")
    parser.add_argument("--key-id", default=KEY_ID, help=f"the access key id clients sign with (default {KEY_ID})")
    parser.add_argument("--probe", metavar="URL", help="check the guard at URL (signed answers, unsigned refused)")
    parser.add_argument("command", nargs="*", help="with --namespace: ElasticMQ's command line, after --")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s sqsguard: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)       # a line per forwarded request otherwise
    secret = os.environ.get(SECRET_ENV, "")
    if len(secret) < 16:
        print(f"error: {SECRET_ENV} must hold the guard's secret (16 characters or more; scripts/elasticmq.sh "
              "generates one)", file=sys.stderr)
        return 2
    if args.probe:
        return probe(args.probe, secret, args.key_id)
    if not args.listen or bool(args.upstream) == bool(args.namespace) or bool(args.command) != bool(args.namespace):
        parser.error("give --listen and either --upstream URL or --namespace -- COMMAND...")
    sock = bind(args.listen)          # on the host's network, before leaving it
    child = None
    upstream = args.upstream
    if args.namespace:
        try:
            enter_new_network_namespace()
        except OSError as exc:
            print(f"error: {exc.strerror}", file=sys.stderr)
            return 2
        child = start_child(args.command, cwd=args.child_cwd, log_file=args.child_log)
        if args.pid_file:
            with open(args.pid_file, "w") as handle:
                handle.write(f"{child.pid}\n")
        upstream = f"http://127.0.0.1:{INNER_PORT}"
    guard = Guard(upstream, secret, key_id=args.key_id)
    log.info("serving on %s, forwarding signed requests (access key id %s) to %s%s", args.listen, args.key_id,
             upstream, " in the guard's own network namespace" if child else "")
    # uvicorn handles SIGTERM/SIGINT while it serves and raises them again once it is done, with the handlers it
    # found: these, which end the guard by SystemExit, so that `finally` stops ElasticMQ (SIGTERM, wait, SIGKILL)
    # rather than the default action killing the guard at once (before or after serving alike).
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _exit_on_signal)
    rc = 1
    try:
        rc = asyncio.run(serve(guard, sock, child))
    except SystemExit:
        rc = 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)    # one stop at a time; the caller's SIGKILL still works
        if child is not None:
            stop_child(child)
        sock.close()
    return rc


def _exit_on_signal(number: int, _frame: object) -> None:
    log.info("%s: stopping", signal.Signals(number).name)
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
