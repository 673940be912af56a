"""`symile-clinical app`: argparse, and the hand-over to the Streamlit server that `app` and
`demo` (app/commands/demo.py) both end in."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add --host, --port and --allow-host (the server's address and the names it answers to)."""
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8501)")
    parser.add_argument(
        "--allow-host",
        dest="allow_hosts",
        metavar="NAME",
        action="append",
        default=[],
        help=(
            "a host name the app answers to besides localhost and --host (repeatable; "
            "'*.example.org' for its subdomains): requests naming any other Host are refused"
        ),
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the served model runs: cpu (default), cuda or cuda:N",
    )


def register_app(subparsers: argparse._SubParsersAction) -> None:
    """Add the `app` subcommand."""
    parser = subparsers.add_parser(
        "app",
        help="serve the web app for a trained run (query by admission or by upload)",
        description=(
            "Serve the Streamlit app for RUN: query by test admission or by an uploaded WFDB "
            "ECG and labs CSV, see the ranked candidate CXRs, what drives each match, Symile "
            "vs CLIP when RUN/compare.json names a comparison run, and the evaluation report. "
            "The model, candidate index (built, or rebuilt when stale) and thumbnails are "
            "loaded when the server starts, before it accepts connections."
        ),
    )
    parser.add_argument(
        "--run",
        dest="run_dir",
        metavar="RUN",
        type=Path,
        required=True,
        help="run directory (from `train`)",
    )
    add_serve_options(parser)
    parser.set_defaults(run=run_app)


def streamlit_command(
    run_dir: Path, host: str, port: int, allow_hosts: Sequence[str] = ()
) -> list[str]:
    """`python -m streamlit run app/web/streamlit_app.py FLAGS -- --run RUN`.

    The flags repeat app/web/.streamlit/config.toml (what a bare `streamlit run` gets) with
    this command's address and port; server.allowedHosts lists every name the Host check
    (app.web.host_guard) lets through, so Streamlit's own websocket check agrees with it.
    """
    import sys

    from app.web.host_guard import allowed_hosts

    entry = Path(__file__).resolve().parents[1] / "web" / "streamlit_app.py"
    hosts = [f"--server.allowedHosts={name}" for name in allowed_hosts(host, allow_hosts)]
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry),
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--client.toolbarMode=viewer",
        # MB; files between the app's own 20 MB limit and this get the app's message.
        "--server.maxUploadSize=25",
        # No forced full garbage collection after each script run (config.toml says why).
        "--runner.postScriptGC=false",
        *hosts,
        "--",
        "--run",
        str(Path(run_dir).resolve()),
    ]


def serve(
    run_dir: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_hosts: Sequence[str] = (),
    device: str = "cpu",
) -> int:
    """Replace this process with the server of `streamlit_command`, its model on `device`.

    exec rather than a child process: Ctrl-C and SIGTERM reach the server itself, and the
    memory of whatever ran before (the demo's training) is given back.
    """
    import sys

    from app.web.run_context import DEVICE_ENV

    command = streamlit_command(run_dir, host, port, allow_hosts)
    os.environ[DEVICE_ENV] = device  # the exec'd server inherits it
    # The command's one user-facing line, the address to open, on stdout: not a log record
    # (logging goes to stderr with timestamps, for diagnosis), and flushed because exec
    # replaces this process and its buffers.
    print(f"symile-clinical app: serving {run_dir} at http://{host}:{port}", flush=True)  # noqa: T201
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 0  # not reached


def run_app(args: argparse.Namespace) -> int:
    """Serve the app for --run; RunUnavailableError (exit 1) when it is not a training run."""
    from app.web.run_context import RunUnavailableError
    from symile_clinical.formats.run_dir import RunDir

    run = RunDir(args.run_dir)
    if not run.has_config():
        raise RunUnavailableError(run.config_path, "missing: not a training run directory")
    return serve(args.run_dir, args.host, args.port, args.allow_hosts, args.device)
