"""Who may use the app (app.web.auth): the rule that anything reachable beyond loopback needs
sign-in, checked on its own and on real server processes that refuse to start without it.

The sign-in itself, through a real OpenID Connect provider and a real browser, is
tests/test_browser_auth.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _app_run import free_port, make_runs

from app.commands.serve import streamlit_command
from app.web.auth import (
    LOCAL,
    SIGN_IN,
    UNAUTHENTICATED,
    AuthConfigError,
    decide_policy,
    is_loopback,
    missing_auth_settings,
    needs_sign_in,
    user_allowed,
    warn_if_anyone_signs_in,
)
from app.web.serve_options import ServeOptions

ROOT = Path(__file__).resolve().parents[1]
AUTH = {
    "redirect_uri": "https://ward.example/oauth2callback",
    "cookie_secret": "a long random string",
    "client_id": "symile",
    "client_secret": "secret",
    "server_metadata_url": "https://idp.example/.well-known/openid-configuration",
}


def test_loopback_addresses_and_names() -> None:
    for address in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(address), address
    for address in ("0.0.0.0", "::", "", "10.0.0.5", "ward.example"):
        assert not is_loopback(address), address


def test_sign_in_is_needed_whenever_the_app_is_reachable_beyond_this_machine() -> None:
    assert not needs_sign_in("127.0.0.1", ["localhost", "127.0.0.1", "::1"], [], served=True)
    assert needs_sign_in("0.0.0.0", [], [], served=True)
    assert needs_sign_in("10.0.0.5", [], [], served=True)
    assert needs_sign_in("127.0.0.1", ["ward.example"], [], served=True)  # a reverse proxy
    assert needs_sign_in("127.0.0.1", ["*"], [], served=True)
    assert needs_sign_in("127.0.0.1", [], ["@ward.example"], served=True)
    assert needs_sign_in(None, [], [], served=True)  # Streamlit's default: every interface
    assert not needs_sign_in(None, [], [], served=False)  # AppTest: nothing is served


def test_the_policy_names_what_sign_in_lacks() -> None:
    assert decide_policy("127.0.0.1", [], False, [], None, served=True).mode == LOCAL
    assert decide_policy("0.0.0.0", [], True, [], None, served=True).mode == UNAUTHENTICATED
    policy = decide_policy("0.0.0.0", ["ward.example"], False, ["@ward.example"], AUTH, True)
    assert policy.mode == SIGN_IN and policy.allow_users == ("@ward.example",)
    with pytest.raises(AuthConfigError) as caught:
        decide_policy("0.0.0.0", [], False, [], None, served=True, where="s.toml")
    assert "[auth] section" in caught.value.reason and "--unauthenticated" in caught.value.reason
    assert caught.value.exit_code == 2 and caught.value.path == "s.toml"
    with pytest.raises(AuthConfigError) as caught:
        decide_policy("0.0.0.0", [], True, ["a@b.c"], None, served=True)
    assert caught.value.path == "--allow-user"
    partial = {k: v for k, v in AUTH.items() if k != "client_secret"}
    assert missing_auth_settings(partial, ["ward.example"]) == ["[auth] client_secret"]
    assert missing_auth_settings(AUTH, ["localhost"]) == [
        "--allow-host ward.example (the redirect_uri's host, which the app must answer to)"
    ]
    wrong = {**AUTH, "redirect_uri": "https://ward.example/"}
    assert missing_auth_settings(wrong, ["ward.example"]) == [
        "[auth] redirect_uri ending in /oauth2callback"
    ]
    ported = {**AUTH, "redirect_uri": "http://localhost:{port}/oauth2callback"}
    assert missing_auth_settings(ported, ["localhost"]) == []


def test_the_allow_list_takes_addresses_and_domains() -> None:
    allow = ["Alice@Ward.Example", "@icu.example", "lab.example"]
    assert user_allowed("alice@ward.example", True, allow)
    assert user_allowed("bob@icu.example", None, allow)
    assert user_allowed("carol@LAB.example", True, allow)
    assert not user_allowed("bob@ward.example", True, allow)
    assert not user_allowed("eve@evil.icu.example", True, allow)  # not a subdomain match
    assert not user_allowed("bob@icu.example", False, allow)  # the IdP says: unverified
    assert not user_allowed(None, True, allow) and not user_allowed("icu.example", True, allow)
    assert user_allowed("anyone@anywhere.example", None, [])  # no list: the IdP decides


def test_the_access_options_reach_the_server_script() -> None:
    access = ServeOptions(unauthenticated=True, allow_users=("@ward.example",), audit_dir=Path("a"))
    command = streamlit_command(Path("run"), "127.0.0.1", 8501, [], access, Path("s.toml"))
    script = command[command.index("--") + 1 :]
    assert ServeOptions.from_args(script, {}) == ServeOptions(
        run_dir=Path("run").resolve(),
        unauthenticated=True,
        allow_users=("@ward.example",),
        audit_dir=Path("a").resolve(),
    )
    assert f"--secrets.files={Path('s.toml').resolve()}" in command


# ---------------------------------------------------------------------------------------
# Real server processes refuse to start


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("auth"))[1]


def start(command: list[str], home: Path) -> subprocess.CompletedProcess:
    """Run a server command in an empty home and working folder (no stray secrets.toml)."""
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(
        command, cwd=home, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_the_app_command_refuses_a_network_address_without_sign_in(
    run: Path, tmp_path: Path
) -> None:
    app = [sys.executable, "-m", "symile_clinical", "app", "--run", str(run)]
    app += ["--port", str(free_port())]
    done = start([*app, "--host", "0.0.0.0"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "requires sign-in" in done.stderr and "[auth] section" in done.stderr
    assert "--unauthenticated" in done.stderr and "serving" not in done.stdout

    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[auth]\nredirect_uri = "http://ward.example/oauth2callback"\n')
    done = start([*app, "--allow-host", "ward.example", "--secrets", str(secrets)], tmp_path)
    assert done.returncode == 2, done.stderr
    for key in ("cookie_secret", "client_id", "client_secret", "server_metadata_url"):
        assert f"[auth] {key}" in done.stderr, key
    assert "[auth] redirect_uri" not in done.stderr


def test_streamlit_run_refuses_a_network_name_without_sign_in(run: Path, tmp_path: Path) -> None:
    entry = ROOT / "app" / "web" / "streamlit_app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(entry)]
    command += ["--server.port", str(free_port()), "--server.allowedHosts=ward.example"]
    done = start([*command, "--", "--run", str(run)], tmp_path)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "refusing to serve" in output and "requires sign-in" in output
    assert "loaded in" not in output  # stopped before the run was loaded


def test_sign_in_without_an_allow_list_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.web.auth")
    warn_if_anyone_signs_in(decide_policy("0.0.0.0", ["ward.example"], False, [], AUTH, True))
    assert "any account the identity provider signs in is admitted" in caplog.text
    assert "--allow-user" in caplog.text
    caplog.clear()
    warn_if_anyone_signs_in(
        decide_policy("0.0.0.0", ["ward.example"], False, ["@ward.example"], AUTH, True)
    )
    warn_if_anyone_signs_in(decide_policy("127.0.0.1", [], False, [], None, served=True))
    warn_if_anyone_signs_in(decide_policy("0.0.0.0", [], True, [], None, served=True))
    assert caplog.text == ""
