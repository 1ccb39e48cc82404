"""Connection set-up shared by every MQTT session of the node: client, TLS, password, URL, topics, payloads.

``describe_error`` names the layer (DNS, TCP, TLS) that failed for an exception raised while connecting;
the publisher logs it and ``mqtt-test`` (``diagnosis.py``) prints it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import ssl
import urllib.parse
from dataclasses import replace
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_monitor.core.errors import UserError
from edge_monitor.core.files import TooLarge, read_capped
from edge_monitor.node.settings import MqttSettings, TlsSettings

SESSION_EXPIRY_SECONDS = 86_400   # MQTT 5: the broker keeps our session this long after the link drops
MAX_PASSWORD_BYTES = 4096         # a password file is read with this cap (never /dev/zero into memory)


def read_password(settings: MqttSettings) -> str | None:
    """The password from ``password_file`` (trailing newline stripped) or the variable ``password_env``."""
    if settings.password_file:
        try:
            raw = read_capped(settings.password_file, MAX_PASSWORD_BYTES)
        except TooLarge:
            raise UserError(f"mqtt.password_file {settings.password_file}: longer than {MAX_PASSWORD_BYTES} bytes; "
                            "it must hold only the password") from None
        except OSError as exc:
            raise UserError(f"mqtt.password_file {settings.password_file}: cannot read it ({exc.strerror})") from None
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise UserError(f"mqtt.password_file {settings.password_file}: not UTF-8 text") from None
    if settings.password_env:
        value = os.environ.get(settings.password_env)
        if value is None:
            raise UserError(f"mqtt.password_env: the environment variable {settings.password_env} is not set")
        return value
    return None


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client TLS context: the CA file (or the system's CAs), an optional client certificate and key."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except FileNotFoundError:
        raise UserError(f"mqtt.tls.ca_file {tls.ca_file}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise UserError(f"mqtt.tls.ca_file {tls.ca_file}: not a usable PEM CA certificate ({exc})") from None
    if tls.key_file and not tls.cert_file:
        raise UserError("mqtt.tls.key_file is set but mqtt.tls.cert_file is not")
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except FileNotFoundError as exc:
            missing = exc.filename or tls.cert_file
            raise UserError(f"mqtt.tls: client certificate or key {missing}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise UserError(f"mqtt.tls.cert_file {tls.cert_file}: cannot load the client certificate and key "
                            f"({getattr(exc, 'reason', None) or exc})") from None
    context.check_hostname = not tls.insecure
    return context


def make_client(settings: MqttSettings, client_id: str, *, persistent: bool, password: str | None) -> paho.Client:
    if settings.protocol not in ("5", "3.1.1"):
        raise UserError(f"mqtt.protocol must be 5 or 3.1.1, got {settings.protocol!r}")
    v5 = settings.protocol == "5"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311, clean_session=None if v5 else not persistent)
    if settings.username is not None:
        client.username_pw_set(settings.username, password)
    elif password is not None:
        raise UserError("mqtt: a password is configured but mqtt.username is not")
    if settings.tls is not None:
        client.tls_set_context(ssl_context(settings.tls))
        client.tls_insecure_set(settings.tls.insecure)
    return client


def connect_args(settings: MqttSettings, persistent: bool) -> dict[str, Any]:
    if settings.protocol != "5":
        return {}
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_SECONDS if persistent else 0
    return {"clean_start": not persistent, "properties": props}


def connect_async(client: paho.Client, settings: MqttSettings, *, persistent: bool) -> None:
    client.connect_async(settings.host, settings.port, settings.keepalive, **connect_args(settings, persistent))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``mqtt://node:***@host``): safe for messages and logs.

    Works on malformed URLs too (no parsing that could fail): the user part is what stands between
    ``//`` (or the start) and the last ``@`` before the first ``/``, ``?`` or ``#``."""
    start = url.find("//")
    start = 0 if start < 0 else start + 2
    end = len(url)
    for sep in "/?#":
        found = url.find(sep, start)
        if found >= 0:
            end = min(end, found)
    at = url.rfind("@", start, end)
    if at < 0:
        return url
    colon = url.find(":", start, at)
    if colon < 0:
        return url
    return f"{url[:colon]}:***{url[at:]}"


def _password_of(url: str) -> str | None:
    redacted = redact_url(url)
    if redacted == url:
        return None
    colon = redacted.find(":***@")
    return url[colon + 1:len(url) - (len(redacted) - colon - 4)]


def parse_url(url: str, base: MqttSettings | None = None) -> MqttSettings:
    """``mqtt://[user@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883) over ``base``; enables MQTT.

    Passwords never go in the URL (they would show in ``ps`` and shell history): use ``mqtt.password_file``
    or ``mqtt.password_env``. With ``mqtts`` and no TLS settings in ``base`` the system's CAs are used.
    Every error names the URL with its password (if any) replaced by ``***``.
    """
    base = base or MqttSettings()
    shown = redact_url(url)
    password = _password_of(url)

    def error(problem: str) -> UserError:
        if password:  # urllib's messages quote the host part only; never trust that with a password
            problem = problem.replace(password, "***")
        return UserError(f"MQTT URL {shown!r}: {problem}")

    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise error(str(exc)) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise error("the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise error("no host")
    if parts.password is not None:
        raise error("do not put the password in the URL; "
                    "use mqtt.password_file or mqtt.password_env (--password-file / --password-env)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise error("only mqtt[s]://[user@]host[:port] is understood")
    tls = (base.tls or TlsSettings()) if parts.scheme == "mqtts" else None
    return replace(base, enabled=True, host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                   username=urllib.parse.unquote(parts.username) if parts.username else base.username)


def describe_error(exc: BaseException | None, host: str, port: int) -> str:
    """One line naming the layer that failed (DNS, TCP, TLS) for an exception raised while connecting."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"DNS: cannot resolve {host!r} ({exc.strerror or exc}); check mqtt.host"
    if isinstance(exc, ConnectionRefusedError):
        return f"TCP: connection to {where} refused: no broker listens there; check mqtt.host and mqtt.port"
    if isinstance(exc, TimeoutError):
        return f"TCP: no answer from {where} (timed out): host down, wrong address or a firewall"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the broker's certificate was not accepted: {exc.verify_message}; "
                "check mqtt.tls.ca_file and that mqtt.host is a name in the certificate")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "WRONG_VERSION_NUMBER":
            reason += " (is this a TLS port?)"
        elif "ALERT" in reason.upper():
            reason += " (the broker refused our client certificate, or needs one: mqtt.tls.cert_file/key_file)"
        return f"TLS: handshake with {where} failed: {reason}"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return f"TCP: {where} closed the connection ({exc.strerror or exc})"
    if isinstance(exc, OSError):
        return f"TCP: cannot connect to {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


def auth_hint(reason: Any, settings: MqttSettings) -> str:
    name = str(reason)
    if name not in ("Bad user name or password", "Not authorized"):
        return ""
    if settings.username is None:
        return "; the broker wants a login: set mqtt.username and mqtt.password_file"
    source = (f"file {settings.password_file}" if settings.password_file
              else f"${settings.password_env}" if settings.password_env else "(no password configured)")
    return f"; check mqtt.username ({settings.username!r}) and the password in {source}"


def topic_level(name: str, what: str, *, slash_ok: bool = False) -> str:
    bad = "+#" if slash_ok else "/+#"
    if not name or any(c in name for c in bad) or "\0" in name:
        raise UserError(f"{what} {name!r} cannot be used in an MQTT topic (empty, or contains "
                        f"{' '.join(repr(c) for c in bad)})")
    return name


def json_number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python numbers, NaN/inf to null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
