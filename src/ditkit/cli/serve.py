"""`ditkit serve`: the HTTP API and web page (ditkit.serve) on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import threading
import warnings
from pathlib import Path

from ditkit.api import load
from ditkit.cli.common import add_debug, add_engine_arg
from ditkit.core.limits import check_int


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="serve the OpenAI-compatible image API, the job API and the web page")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000, help="port to bind (0: a free one, printed at start)")
    s.add_argument("--models", default="shapes-64", help="comma-separated model names or folders to load")
    s.add_argument("--max-queue", type=int, default=32, help="queued jobs per model before 429")
    s.add_argument("--max-batch", type=int, default=4, help="images per sampler batch")
    s.add_argument("--batch-wait-ms", type=float, default=50.0,
                   help="ms to wait for compatible jobs to fill a generate batch (latency for fuller batches)")
    s.add_argument("--preview-every", type=int, default=1,
                   help="a live preview every K sampler steps, only while an event stream follows the job")
    s.add_argument("--max-frames", type=int, default=16, help="most frames of one video (task video)")
    s.add_argument("--control-models", default="",
                   help="comma-separated control model folders (beyond the embedded ones) jobs may name in control "
                        "(docs/serving.md#control)")
    s.add_argument("--api-key-file", type=Path, help="file holding the bearer key clients must send")
    s.add_argument("--results-ttl", type=float, default=600.0, help="seconds finished jobs and images are kept")
    s.add_argument("--cors-origin", help="the one origin allowed by CORS (off by default)")
    s.add_argument("--device", default="cpu")
    add_engine_arg(s)
    add_debug(s)
    s.set_defaults(handler=cmd_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening address, bound before the models load: a port in use is a one-line error at
    once, and --port 0 learns its port. uvicorn serves on this socket."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    return sock


def serve_until_stopped(server, sock: socket.socket) -> None:
    """Run the uvicorn server until SIGINT or SIGTERM. uvicorn finishes in-flight requests, then
    re-raises the signal to the handler it found; ours ignores it, so the command returns and
    exits 0 (instead of KeyboardInterrupt's 130, or death by SIGTERM). Signal handlers exist only
    in the main thread: from another thread (main() called by a Python caller) uvicorn runs as is."""
    if threading.current_thread() is not threading.main_thread():
        server.run(sockets=[sock])
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # the [serve] extra: fastapi and uvicorn are optional dependencies
        import uvicorn

        from ditkit.serve.app import create_app
        from ditkit.serve.settings import ServeSettings
    except ImportError as e:
        raise ValueError(f"ditkit serve needs the serve extra (pip install 'ditkit[serve]'): {e}") from None
    check_int("--port", args.port, 0, 65535)
    key = None
    if args.api_key_file is not None:
        if not args.api_key_file.is_file():
            raise ValueError(f"--api-key-file {str(args.api_key_file)!r} does not exist")
        key = args.api_key_file.read_text().strip()
    settings = ServeSettings(max_queue=args.max_queue, max_batch=args.max_batch, results_ttl=args.results_ttl,
                             api_key=key, cors_origin=args.cors_origin, batch_wait_ms=args.batch_wait_ms,
                             preview_every=args.preview_every, max_frames=args.max_frames,
                             control_models=tuple(m.strip() for m in args.control_models.split(",") if m.strip()))
    if not is_loopback(args.host) and key is None:
        warnings.warn(f"binding {args.host} without --api-key-file: anyone who can reach this address can use the "
                      "server")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise ValueError("--models is empty: give at least one model name or folder")
    sock = bind(args.host, args.port)
    try:
        pipes = {Path(name).name: load(name, device=args.device, engine=args.engine) for name in names}
        app = create_app(pipes, settings)
        try:
            port = sock.getsockname()[1]
            server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=port, log_level="warning"))
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(f"ditkit serve: {', '.join(pipes)} on http://{host}:{port}/", file=sys.stderr, flush=True)
            serve_until_stopped(server, sock)
        finally:
            app.state.service.close()
    finally:
        sock.close()
    print("ditkit serve: stopped", file=sys.stderr)
    return 0
