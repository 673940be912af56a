"""Who may use the app: sign-in with Streamlit's own OpenID Connect support beyond loopback.

The rule (`decide_policy`):
- served on a loopback address and answering only to localhost names (the demo, a laptop):
  no sign-in, the viewer is "anonymous-loopback";
- reachable by other machines (a bind address that is not loopback, an `--allow-host`
  name, or an `--allow-user` list): every visitor signs in through the identity provider
  configured in `.streamlit/secrets.toml` `[auth]` (`st.login`, `st.user`), and the
  server refuses to start when that configuration is incomplete, naming what is missing;
- unless `--unauthenticated` says the deployment is knowingly open: then every page says
  so, and the viewer is "anonymous-unauthenticated".

`--allow-user` limits sign-in to e-mail addresses or whole domains. The page-side gate is
`require_viewer`; the server checks the configuration at start-up (`configure_server`,
from app/web/streamlit_app.py) and `symile-clinical app` before it starts the server.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.web.host_guard import WILDCARD_ADDRESSES, allowed_hosts, is_allowed
from symile_clinical.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

LOCAL = "local"
SIGN_IN = "sign-in"
UNAUTHENTICATED = "unauthenticated"
LOOPBACK_VIEWER = "anonymous-loopback"
UNAUTHENTICATED_VIEWER = "anonymous-unauthenticated"
# The keys st.login() needs for its default provider (Streamlit's authentication docs).
AUTH_KEYS = ("redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url")
CALLBACK_PATH = "/oauth2callback"
UNAUTHENTICATED_BANNER = (
    "This deployment is unauthenticated (--unauthenticated): anyone who can reach it sees "
    "every admission. Configure sign-in before using it with patient data."
)
STREAMLIT_AUTH_DOCS = "https://docs.streamlit.io/develop/concepts/connections/authentication"


class AuthConfigError(UsageError):
    """Sign-in is required but cannot work: `path` names the settings, `reason` what is missing."""


@dataclass(frozen=True)
class AccessPolicy:
    """How visitors are let in: mode LOCAL, SIGN_IN or UNAUTHENTICATED; allow_users the
    e-mails or domains allowed to sign in (empty: anyone the identity provider signs in)."""

    mode: str
    allow_users: tuple[str, ...] = ()


def is_loopback(address: str) -> bool:
    """Whether a bind address reaches this machine only ('127.0.0.1', '::1', 'localhost')."""
    name = address.strip().lower().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, other machines may use it


def needs_sign_in(
    address: str | None, extra_hosts: Iterable[str], allow_users: Sequence[str], served: bool
) -> bool:
    """Whether the app is reachable beyond this machine (or asked to check users).

    address None: no address configured; a real server (served=True) then binds every
    interface (Streamlit's default), while streamlit.testing's AppTest serves nothing.
    """
    if allow_users:
        return True
    if address is None:
        if served:
            return True
    elif address.strip() in WILDCARD_ADDRESSES or not is_loopback(address):
        return True
    return any(not is_loopback(name) for name in allowed_hosts(None, extra_hosts))


def missing_auth_settings(
    auth: Mapping[str, Any] | None, answered_hosts: Sequence[str] = ()
) -> list[str]:
    """What st.login() lacks in a secrets `[auth]` section (empty: sign-in can work).

    answered_hosts: the Host names the app answers to; the redirect_uri must name one, or
    the identity provider's redirect back would be refused by the Host check.
    """
    missing = []
    try:
        from streamlit.auth_util import is_authlib_installed

        if not is_authlib_installed():
            missing.append("Authlib >= 1.3.2 (pip install 'streamlit[auth]')")
    except ImportError:  # pragma: no cover - streamlit is a dependency of the app
        missing.append("streamlit")
    if not auth:
        return [*missing, "an [auth] section in .streamlit/secrets.toml"]
    missing += [f"[auth] {key}" for key in AUTH_KEYS if not auth.get(key)]
    # Streamlit fills in "{port}" itself; any port will do for the checks here.
    redirect = str(auth.get("redirect_uri") or "").replace("{port}", "8501")
    if redirect:
        parts = urlsplit(redirect)
        if not parts.path.endswith(CALLBACK_PATH):
            missing.append(f"[auth] redirect_uri ending in {CALLBACK_PATH}")
        elif answered_hosts and not is_allowed(parts.netloc, answered_hosts):
            missing.append(
                f"--allow-host {parts.hostname} (the redirect_uri's host, which the app must "
                "answer to)"
            )
    return missing


def decide_policy(
    address: str | None,
    extra_hosts: Iterable[str],
    unauthenticated: bool,
    allow_users: Sequence[str],
    auth: Mapping[str, Any] | None,
    served: bool,
    where: str = ".streamlit/secrets.toml",
) -> AccessPolicy:
    """The access policy of a server at `address` answering to `extra_hosts`; an
    AuthConfigError (exit 2) names what is missing when sign-in is needed but cannot work.

    auth: the secrets' [auth] section (None when there is none); where: the secrets files
    read, for the message.
    """
    extra_hosts = list(extra_hosts)
    if not needs_sign_in(address, extra_hosts, allow_users, served):
        return AccessPolicy(LOCAL)
    if unauthenticated:
        if allow_users:
            raise AuthConfigError(
                "--allow-user", "needs sign-in, which --unauthenticated turns off: drop one"
            )
        return AccessPolicy(UNAUTHENTICATED)
    missing = missing_auth_settings(auth, allowed_hosts(address, extra_hosts))
    if missing:
        reach = f"--host {address}" if address else "every interface"
        names = [name for name in allowed_hosts(None, extra_hosts) if not is_loopback(name)]
        raise AuthConfigError(
            where,
            f"serving beyond this machine ({reach}, Host names {', '.join(names) or '-'}) "
            f"requires sign-in, and it is not configured: missing {'; '.join(missing)}. "
            f"See docs/app.md and {STREAMLIT_AUTH_DOCS}; or pass --unauthenticated to serve "
            "without sign-in, knowingly.",
        )
    return AccessPolicy(SIGN_IN, tuple(allow_users))


def read_secrets(files: Iterable[Path]) -> dict[str, Any]:
    """The secrets TOML files merged in order (later files win per top-level key), as
    Streamlit merges them; missing files are skipped, an unreadable one is an error."""
    merged: dict[str, Any] = {}
    for path in files:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            merged.update(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise AuthConfigError(path, f"cannot read the secrets file: {error}") from error
    return merged


def default_secrets_files(script: Path) -> list[Path]:
    """Where Streamlit looks for secrets.toml when serving `script`: ~/.streamlit, the
    working folder's .streamlit, and the script's own folder's .streamlit."""
    from streamlit import file_util

    return [
        Path(file_util.get_streamlit_file_path("secrets.toml")),
        Path(file_util.get_project_streamlit_file_path("secrets.toml")),
        Path(file_util.get_main_script_streamlit_file_path(str(script), "secrets.toml")),
    ]


def user_allowed(email: str | None, email_verified: object, allow_users: Sequence[str]) -> bool:
    """Whether a signed-in user may use the app: any e-mail when allow_users is empty, else
    one listed exactly or under a listed domain ('@hospital.org' or 'hospital.org'). An
    address the identity provider says is unverified is never allowed by a list."""
    if not allow_users:
        return True
    if not email or email_verified is False or "@" not in email:
        return False
    email = email.strip().lower()
    domain = email.rsplit("@", 1)[1]
    for entry in allow_users:
        entry = entry.strip().lower()
        if "@" in entry.lstrip("@"):
            if email == entry:
                return True
        elif domain == entry.lstrip("@"):
            return True
    return False


# ---------------------------------------------------------------------------------------
# The server's policy, decided once per process


_server_policy: list[AccessPolicy] = []


def policy_from_streamlit(options: Any, served: bool) -> AccessPolicy:
    """decide_policy for the running Streamlit config (server.address, server.allowedHosts)
    and its secrets; options: the script's ServeOptions."""
    from streamlit import config
    from streamlit.runtime.secrets import secrets_singleton

    auth = None
    if secrets_singleton.load_if_toml_exists():
        section = secrets_singleton.get("auth")
        auth = section.to_dict() if hasattr(section, "to_dict") else section
    files = ", ".join(dict.fromkeys(config.get_option("secrets.files") or []))
    return decide_policy(
        config.get_option("server.address"),
        config.get_option("server.allowedHosts") or [],
        options.unauthenticated,
        options.allow_users,
        auth,
        served,
        where=files or "secrets.toml",
    )


def configure_server(options: Any) -> AccessPolicy:
    """Decide the serving process's policy at start-up (AuthConfigError when sign-in is
    needed but not configured); pages read it through current_policy."""
    policy = policy_from_streamlit(options, served=True)
    _server_policy[:] = [policy]
    log.info("access: %s; allowed users: %s", policy.mode, ", ".join(policy.allow_users) or "-")
    warn_if_anyone_signs_in(policy)
    return policy


def warn_if_anyone_signs_in(policy: AccessPolicy) -> None:
    """Log a warning when sign-in admits any account the identity provider signs in (no
    --allow-user): with a public provider (Google, Microsoft) that is anyone with an account."""
    if policy.mode == SIGN_IN and not policy.allow_users:
        log.warning(
            "sign-in without --allow-user: any account the identity provider signs in is "
            "admitted; limit it with --allow-user EMAIL or --allow-user @DOMAIN"
        )


def serves_without_sign_in() -> bool:
    """Whether this server lets visitors in without sign-in because it is local only (the
    LOCAL policy, or none decided yet): app.web.host_guard.HostGuard then refuses proxied
    requests."""
    return not _server_policy or _server_policy[0].mode == LOCAL


def current_policy(options: Any) -> AccessPolicy:
    """The server's policy (configure_server), or, without a server that decided one
    (streamlit.testing's AppTest), the same rule on the current config."""
    if _server_policy:
        return _server_policy[0]
    return policy_from_streamlit(options, served=False)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: identity (an e-mail or an anonymous label) and whether they may."""

    identity: str
    allowed: bool


def require_viewer(policy: AccessPolicy) -> Viewer:
    """The page's gate. Without sign-in (LOCAL, UNAUTHENTICATED with its banner) every
    visitor passes; with SIGN_IN, a visitor not signed in sees only the sign-in button
    (the page stops), and a signed-in user outside the allow-list gets Viewer(allowed=False)
    after a refusal message and a sign-out button."""
    import streamlit as st

    if policy.mode == LOCAL:
        return Viewer(LOOPBACK_VIEWER, True)
    if policy.mode == UNAUTHENTICATED:
        st.warning(UNAUTHENTICATED_BANNER, icon="⚠️")
        return Viewer(UNAUTHENTICATED_VIEWER, True)
    user = st.user
    if not user.get("is_logged_in"):
        st.title("Symile clinical retrieval")
        st.write("Sign in with your organisation's account to use this app.")
        st.button("Sign in", on_click=st.login, type="primary")
        st.stop()
    email = str(user.get("email") or user.get("sub") or "unknown")
    if not user_allowed(user.get("email"), user.get("email_verified"), policy.allow_users):
        st.error(f"Access refused: {email} is not allowed to use this app.")
        st.button("Sign out", on_click=st.logout)
        return Viewer(email, False)
    with st.sidebar:
        st.caption(f"Signed in as {email}")
        st.button("Sign out", on_click=st.logout)
    return Viewer(email, True)
