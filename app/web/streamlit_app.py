"""The app's server: `symile-clinical app --run RUN` (or `streamlit run app/web/streamlit_app.py
-- --run RUN`, the same server with the settings of app/web/.streamlit/config.toml).

An st.App around the page script `app/web/main.py`, so that both ways of starting it get:
- the Host check of `app.web.host_guard.HostGuard` on every HTTP and websocket request (DNS
  rebinding), before Streamlit sees the request, and its security headers on every HTTP
  response; served without sign-in (loopback only), it also refuses proxied requests;
- the access rule of `app.web.auth`, decided before the server accepts connections: served
  beyond loopback without a complete `[auth]` sign-in configuration (and without
  `--unauthenticated`), the server does not start;
- a warm start: the run's model, index, thumbnails, metadata and query embeddings are
  loaded in the server's startup (`app.web.run_context.warm_served_run`), before it accepts
  connections, so no user waits for them; sessions share what was loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

# `streamlit run` imports this file as a top-level module with app/ on sys.path.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from starlette.middleware import Middleware  # noqa: E402
from streamlit import App  # noqa: E402

from app.web.auth import serves_without_sign_in  # noqa: E402
from app.web.host_guard import HostGuard  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "main.py"
log = logging.getLogger("app.server")


@asynccontextmanager
async def warm_start(_app: Any) -> AsyncIterator[None]:
    """Decide who may use the app, then load the run, before the server accepts connections.

    Sign-in needed but not configured: logged and raised, and the server does not start. A
    run that cannot be served is logged here and shown to each visitor by the page.
    """
    from app.web.auth import AuthConfigError, configure_server
    from app.web.run_context import RunUnavailableError, warm_served_run
    from app.web.serve_options import ServeOptions

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    options = ServeOptions.from_args(sys.argv[1:], os.environ)
    try:
        configure_server(options)
    except AuthConfigError as error:
        log.error("refusing to serve: %s", error)
        raise  # Streamlit ends the server before it accepts connections (exit status 3)
    run_dir = options.run_dir
    if run_dir is not None:
        try:
            await asyncio.to_thread(warm_served_run, run_dir)
        except RunUnavailableError as error:
            log.error("cannot serve %s: %s", error.path, error.reason)
    yield


app = App(
    SCRIPT,
    lifespan=warm_start,
    middleware=[Middleware(HostGuard, serves_locally=serves_without_sign_in)],
)
