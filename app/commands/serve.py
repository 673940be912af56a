"""`symile-clinical app`: argparse, and the hand-over to the Streamlit server that `app` and
`demo` (app/commands/demo.py) both end in."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.web.auth import AccessPolicy
    from app.web.serve_options import ServeOptions

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "web" / "streamlit_app.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add --host, --port and --allow-host (the server's address and the names it answers
    to), who may use the app (--unauthenticated, --allow-user, --secrets) and --audit-dir."""
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
        "--secrets",
        type=Path,
        metavar="FILE",
        help=(
            "the secrets.toml whose [auth] section configures sign-in (default: Streamlit's "
            "own places: ~/.streamlit/, ./.streamlit/, app/web/.streamlit/); sign-in is "
            "required whenever the app is reachable beyond this machine (docs/app.md)"
        ),
    )
    parser.add_argument(
        "--allow-user",
        dest="allow_users",
        metavar="EMAIL_OR_DOMAIN",
        action="append",
        default=[],
        help=(
            "only these signed-in users (repeatable; an address, or '@hospital.org' for a "
            "whole domain); implies sign-in"
        ),
    )
    parser.add_argument(
        "--unauthenticated",
        action="store_true",
        help=(
            "serve beyond this machine without sign-in, knowingly (every page then says so); "
            "without it, a non-loopback --host or an --allow-host needs [auth] in secrets.toml"
        ),
    )
    parser.add_argument(
        "--audit-dir",
        type=Path,
        metavar="DIR",
        help="where the audit trail of views is appended (default RUN/audit)",
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
    run_dir: Path,
    host: str,
    port: int,
    allow_hosts: Sequence[str] = (),
    access: ServeOptions | None = None,
    secrets: Path | None = None,
) -> list[str]:
    """`python -m streamlit run app/web/streamlit_app.py FLAGS -- --run RUN ...`.

    The flags repeat app/web/.streamlit/config.toml (what a bare `streamlit run` gets) with
    this command's address and port; server.allowedHosts lists every name the Host check
    (app.web.host_guard) lets through, so Streamlit's own websocket check agrees with it.
    access: the script's options after `--` (app.web.serve_options; its run_dir is replaced
    by `run_dir`); secrets: the secrets.toml Streamlit reads instead of its default places.
    """
    import sys

    from app.web.host_guard import allowed_hosts
    from app.web.serve_options import ServeOptions
    from app.web.uploads import MAX_UPLOAD_MB

    access = replace(access or ServeOptions(), run_dir=Path(run_dir))
    hosts = [f"--server.allowedHosts={name}" for name in allowed_hosts(host, allow_hosts)]
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(SERVER_SCRIPT),
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--client.toolbarMode=viewer",
        # Errors reach the visitor as a generic message; details go to the log (config.toml).
        "--client.showErrorDetails=none",
        # MB: the app's one upload limit, enforced by the server and stated by the page.
        f"--server.maxUploadSize={MAX_UPLOAD_MB}",
        # No forced full garbage collection after each script run (config.toml says why).
        "--runner.postScriptGC=false",
        *hosts,
        *([f"--secrets.files={Path(secrets).resolve()}"] if secrets is not None else []),
        "--",
        *access.to_args(),
    ]


def check_access(
    host: str,
    allow_hosts: Sequence[str],
    access: ServeOptions,
    secrets: Path | None = None,
) -> AccessPolicy:
    """The access policy the server will apply (app.web.auth.decide_policy), decided here
    too so that a server that would refuse to start fails now, with its reason (exit 2)."""
    from app.web.auth import decide_policy, default_secrets_files, read_secrets

    files = [Path(secrets)] if secrets is not None else default_secrets_files(SERVER_SCRIPT)
    if secrets is not None and not Path(secrets).is_file():
        from app.web.auth import AuthConfigError

        raise AuthConfigError(secrets, "no such secrets file")
    auth = read_secrets(files).get("auth")
    return decide_policy(
        host,
        allow_hosts,
        access.unauthenticated,
        access.allow_users,
        auth,
        served=True,
        where=", ".join(dict.fromkeys(str(f) for f in files)),
    )


def serve(
    run_dir: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_hosts: Sequence[str] = (),
    device: str = "cpu",
    access: ServeOptions | None = None,
    secrets: Path | None = None,
) -> int:
    """Replace this process with the server of `streamlit_command`, its model on `device`.

    The access rule is checked first (check_access: exit 2 naming what sign-in lacks). exec
    rather than a child process: Ctrl-C and SIGTERM reach the server itself, and the
    memory of whatever ran before (the demo's training) is given back.
    """
    import sys

    from app.web.run_context import DEVICE_ENV
    from app.web.serve_options import ServeOptions

    access = access or ServeOptions()
    policy = check_access(host, allow_hosts, access, secrets)
    command = streamlit_command(run_dir, host, port, allow_hosts, access, secrets)
    os.environ[DEVICE_ENV] = device  # the exec'd server inherits it
    # The command's one user-facing line, the address to open, on stdout: not a log record
    # (logging goes to stderr with timestamps, for diagnosis), and flushed because exec
    # replaces this process and its buffers.
    print(  # noqa: T201
        f"symile-clinical app: serving {run_dir} at http://{host}:{port} ({policy.mode})",
        flush=True,
    )
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 0  # not reached


def access_options(args: argparse.Namespace) -> ServeOptions:
    """The script options of add_serve_options' access flags."""
    from app.web.serve_options import ServeOptions

    return ServeOptions(
        unauthenticated=args.unauthenticated,
        allow_users=tuple(args.allow_users),
        audit_dir=args.audit_dir,
    )


def run_app(args: argparse.Namespace) -> int:
    """Serve the app for --run; RunUnavailableError (exit 1) when it is not a training run."""
    from app.web.run_context import RunUnavailableError
    from symile_clinical.formats.run_dir import RunDir

    run = RunDir(args.run_dir)
    if not run.has_config():
        raise RunUnavailableError(run.config_path, "missing: not a training run directory")
    return serve(
        args.run_dir,
        args.host,
        args.port,
        args.allow_hosts,
        args.device,
        access_options(args),
        args.secrets,
    )
