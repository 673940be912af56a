"""The app answers only its own host (DNS rebinding), however it is started: real server
processes, real HTTP and websocket requests carrying a foreign Host header.

Also: every documented way of starting it binds 127.0.0.1 and applies the app's one upload
limit (app.web.uploads.MAX_UPLOAD_MB), every HTTP response carries the security headers,
and the server has loaded the run before it answers its health check.
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _app_run import (
    StreamlitSession,
    free_port,
    make_runs,
    result_captions,
    start_server,
    stop_server,
    wait_healthy,
)

from app.web.auth import UNAUTHENTICATED_BANNER
from app.web.host_guard import allowed_hosts, host_name, is_allowed
from app.web.uploads import MAX_UPLOAD_MB

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = "evil.example"


def get(port: int, path: str, host: str) -> int:
    """Status of GET path on 127.0.0.1:port sent with the Host header `host`."""
    return get_response(port, path, host)[0]


def get_response(
    port: int, path: str, host: str, extra: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of GET path sent with Host `host` and
    the `extra` request headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        for name, value in (extra or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


def assert_security_headers(headers: dict[str, str], what: str) -> None:
    """The headers app.web.host_guard puts on every HTTP response."""
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, what
    assert "object-src 'none'" in csp and "'unsafe-eval'" not in csp, what
    assert headers.get("x-frame-options") == "DENY", what
    assert headers.get("referrer-policy") == "no-referrer", what
    assert headers.get("x-content-type-options") == "nosniff", what


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def websocket_refused(url: str, host: str) -> bool:
    """Whether the websocket handshake to /_stcore/stream with this Host is refused."""
    from websockets.exceptions import InvalidStatus

    try:
        StreamlitSession(url, host=host, timeout_s=30).close()
    except InvalidStatus as error:
        return error.response.status_code == 403
    return False


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("host"))[1]


def serve(command: list[str], port: int, log: Path, cwd: Path | None = None) -> Iterator[str]:
    process = start_server(command, log, cwd=cwd)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def app_command(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """`symile-clinical app --run RUN --port P --allow-host app.example.org --unauthenticated`
    (a name beyond localhost needs sign-in, or --unauthenticated: tests/test_auth.py)."""
    port = free_port()
    command = [sys.executable, "-m", "symile_clinical", "app", "--run", str(run)]
    command += ["--port", str(port), "--allow-host", "app.example.org", "--unauthenticated"]
    log = tmp_path_factory.mktemp("app") / "server.log"
    yield from ((url, port, log) for url in serve(command, port, log))


@pytest.fixture(scope="module")
def streamlit_run(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The README's other way: `streamlit run app/web/streamlit_app.py -- --run RUN`, with no
    option but the port, from another folder (no project .streamlit/ there)."""
    port = free_port()
    entry = ROOT / "app" / "web" / "streamlit_app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(entry), "--server.port", str(port)]
    command += ["--", "--run", str(run)]
    cwd = tmp_path_factory.mktemp("elsewhere")
    yield from ((url, port, None) for url in serve(command, port, cwd / "server.log", cwd))


@pytest.fixture(params=["app_command", "streamlit_run"])
def server(request: pytest.FixtureRequest) -> tuple[str, int]:
    url, port, _ = request.getfixturevalue(request.param)
    return url, port


def test_a_foreign_host_is_refused_over_http(server: tuple[str, int]) -> None:
    _, port = server
    for path in ("/", "/_stcore/health", "/_stcore/host-config", "/media/anything.png"):
        assert get(port, path, f"{FOREIGN}:{port}") == 403, path
        assert get(port, path, FOREIGN) == 403, path
    assert get(port, "/", f"127.0.0.1.{FOREIGN}:{port}") == 403
    for own in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert get(port, "/", own) == 200, own


def test_a_foreign_host_is_refused_over_the_websocket(server: tuple[str, int]) -> None:
    url, port = server
    assert websocket_refused(url, f"{FOREIGN}:{port}")
    session = StreamlitSession(url, host=f"localhost:{port}")
    try:
        assert len(result_captions(session.rerun())) == 4  # the factory's 4 candidates
    finally:
        session.close()


def test_every_way_of_starting_binds_localhost_with_the_upload_limit(
    server: tuple[str, int],
) -> None:
    url, port = server
    assert listening_addresses(port) == {"127.0.0.1"}
    session = StreamlitSession(url)
    try:
        elements = session.rerun(page="by_upload")
    finally:
        session.close()
    limits = {e.file_uploader.max_upload_size_mb for e in elements if e.HasField("file_uploader")}
    assert limits == {MAX_UPLOAD_MB} == {20}  # the one limit: server, uploaders and parser


def test_every_http_response_carries_the_security_headers(server: tuple[str, int]) -> None:
    _, port = server
    status, _, page = get_response(port, "/", f"localhost:{port}")
    assert status == 200
    scripts = sorted(set(re.findall(rb'src="\./(static/js/[^"]+)"', page)))
    assert scripts, "no script in Streamlit's page"
    paths = ["/", "/_stcore/health", "/_stcore/host-config", f"/{scripts[0].decode()}"]
    paths += ["/favicon.png", "/media/missing.png", "/no/such/page", "/auth/login"]
    for path in paths:
        status, headers, _ = get_response(port, path, f"localhost:{port}")
        assert_security_headers(headers, f"{path} ({status})")
        assert f"ws://localhost:{port}" in headers["content-security-policy"], path
        status, headers, _ = get_response(port, path, f"{FOREIGN}:{port}")
        assert status == 403, path
        assert_security_headers(headers, f"refused {path}")
        assert FOREIGN not in headers["content-security-policy"]


PROXY_HEADERS = {
    "X-Forwarded-For": "203.0.113.7",
    "Forwarded": "for=203.0.113.7;proto=https",
    "X-Real-IP": "203.0.113.7",
}


def test_served_without_sign_in_a_proxied_request_is_refused(streamlit_run: tuple) -> None:
    """A reverse proxy on this machine reaches the local (no sign-in) app from loopback with
    a localhost Host: its forwarding headers give it away, and it is refused."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    _, port, _ = streamlit_run
    for name, value in PROXY_HEADERS.items():
        for path in ("/", "/_stcore/health", "/_stcore/host-config"):
            status, headers, body = get_response(port, path, f"localhost:{port}", {name: value})
            assert status == 403, (name, path)
            assert_security_headers(headers, f"proxied {path} ({name})")
            assert b"proxied deployment needs sign-in" in body, name
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            with pytest.raises(InvalidStatus) as refused:
                connect(
                    f"ws://localhost:{port}/_stcore/stream",
                    sock=sock,
                    subprotocols=["streamlit"],
                    additional_headers={name: value},
                    open_timeout=30,
                )
        finally:
            sock.close()
        assert refused.value.response.status_code == 403, name
    assert get(port, "/", f"localhost:{port}") == 200  # the same request, not proxied


def test_a_deployment_open_knowingly_may_be_proxied(app_command: tuple) -> None:
    _, port, _ = app_command  # --unauthenticated: open to the network on purpose
    status, _, _ = get_response(port, "/", f"app.example.org:{port}", PROXY_HEADERS)
    assert status == 200


def test_allow_host_adds_a_name(app_command: tuple) -> None:
    _, port, _ = app_command
    assert get(port, "/", f"app.example.org:{port}") == 200
    assert get(port, "/", f"other.example.org:{port}") == 403


def test_an_unauthenticated_deployment_says_so_on_every_page(app_command: tuple) -> None:
    url, _, _ = app_command
    session = StreamlitSession(url)
    try:
        for page in ("", "by_upload", "report"):
            alerts = [e.alert.body for e in session.rerun(page=page) if e.HasField("alert")]
            assert UNAUTHENTICATED_BANNER in alerts, page
    finally:
        session.close()


def test_the_run_is_loaded_before_the_server_answers(app_command: tuple) -> None:
    _, _, log = app_command
    # The factory's 24 test admissions are prepared within the start-up budget too.
    assert "model, 24 candidates, thumbnails and 24 admissions loaded" in log.read_text()


def test_allowed_names_and_header_parsing() -> None:
    assert allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts("0.0.0.0", ["Ward.Example."]) == (
        "localhost",
        "127.0.0.1",
        "::1",
        "ward.example",
    )
    assert "10.0.0.5" in allowed_hosts("10.0.0.5")
    assert host_name("[::1]:8501") == "::1" and host_name("LocalHost.:80") == "localhost"
    for bad in (None, "", "a:b:c", "user@localhost", "localhost/x", "localhost:99999"):
        assert host_name(bad) is None, bad
        assert not is_allowed(bad, ["localhost"])
    assert is_allowed("a.ward.example:1", ["*.ward.example"])
    assert not is_allowed("ward.example.evil:1", ["*.ward.example"])


def test_the_app_command_repeats_every_setting_of_config_toml() -> None:
    import tomllib

    from app.commands.serve import streamlit_command

    settings = tomllib.loads((ROOT / "app" / "web" / ".streamlit" / "config.toml").read_text())
    command = streamlit_command(Path("run"), "127.0.0.1", 8501)
    flags = dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)
    for section, options in settings.items():
        for name, value in options.items():
            expected = str(value).lower() if isinstance(value, bool) else str(value)
            assert flags[f"{section}.{name}"] == expected, f"{section}.{name}"
    # No forced full collection after each page run (the largest cost of a query).
    assert settings["runner"]["postScriptGC"] is False
    assert settings["server"]["maxUploadSize"] == MAX_UPLOAD_MB
    # No traceback, exception type or server path on a visitor's page (Streamlit's default
    # is "full").
    assert settings["client"]["showErrorDetails"] == "none"
