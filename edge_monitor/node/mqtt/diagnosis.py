"""``mqtt-test`` diagnosis: connect step by step (DNS, TCP, TLS, CONNECT, SUBSCRIBE, PUBLISH) and say which failed."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_monitor.core.errors import UserError
from edge_monitor.core.events import iso_ms, now_ms
from edge_monitor.node.mqtt.connection import (
    auth_hint,
    connect_args,
    describe_error,
    json_bytes,
    make_client,
    read_password,
    ssl_context,
    topic_level,
)
from edge_monitor.node.settings import MqttSettings


class MqttCheckError(UserError):
    """A failed step of ``mqtt-test``; ``str()`` says which step and what to do."""




def check_connection(settings: MqttSettings, node: str, timeout: float = 10.0,
                     report: Callable[[str], None] | None = None) -> list[str]:
    """Connect as the publisher would, publish to ``<prefix>/<node>/test`` and wait for the PUBACK.

    Returns one line per step that passed (also given to ``report`` as they pass); the first failing step
    raises :class:`MqttCheckError` saying what failed: DNS, TCP, TLS, auth (CONNACK) or ACL (the publish).
    The test uses its own client id (``<client id>-mqtt-test``) so that a running daemon is not kicked off.
    """
    steps: list[str] = []

    def passed(line: str) -> None:
        steps.append(line)
        if report:
            report(line)

    host, port = settings.host, settings.port
    password = read_password(settings)
    client_id = f"{settings.client_id or f'edge-monitor-{node}'}-mqtt-test"
    client = make_client(settings, client_id, persistent=False, password=password)  # config errors first
    topic = f"{settings.prefix.strip('/')}/{topic_level(node, 'node')}/test"
    # DNS
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MqttCheckError(describe_error(exc, host, port)) from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    passed(f"DNS: {host} is {', '.join(addresses)}")
    # TCP, then TLS on the same probe connection
    try:
        probe = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise MqttCheckError(describe_error(exc, host, port)) from None
    try:
        passed(f"TCP: {host}:{port} accepts connections")
        if settings.tls is not None:
            passed(_check_tls(probe, settings, timeout))
    finally:
        probe.close()
    # MQTT: CONNECT, SUBSCRIBE, PUBLISH
    done = {name: threading.Event() for name in ("connack", "suback", "puback", "message", "closed")}
    seen: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        seen["connack"] = reason
        done["connack"].set()

    def on_subscribe(_c: Any, _u: Any, _mid: int, reasons: list, _p: Any) -> None:
        seen["suback"] = reasons[0] if reasons else None
        done["suback"].set()

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        seen["puback"] = reason
        done["puback"].set()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        if message.topic == topic and message.payload == payload:
            done["message"].set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        seen["closed"] = reason
        done["closed"].set()

    client.on_connect, client.on_subscribe, client.on_publish = on_connect, on_subscribe, on_publish
    client.on_message, client.on_disconnect = on_message, on_disconnect
    client.connect_timeout = timeout
    payload = json_bytes({"test": True, "node": node, "client_id": client_id, "time": iso_ms(now_ms())})
    try:
        client.connect(host, port, settings.keepalive, **connect_args(settings, persistent=False))
    except OSError as exc:
        raise MqttCheckError(describe_error(exc, host, port)) from None
    client.loop_start()
    try:
        if not _wait_either(done["connack"], done["closed"], timeout) or "connack" not in seen:
            raise MqttCheckError(f"MQTT: no CONNACK from {host}:{port} within {timeout:g} s"
                                 f"{' (the broker closed the connection)' if 'closed' in seen else ''}; "
                                 f"is it an MQTT {settings.protocol} broker "
                                 f"{'with TLS' if settings.tls else 'without TLS (for TLS: mqtts://, mqtt.tls)'}?")
        reason = seen["connack"]
        if reason.is_failure:
            who = f"user {settings.username!r}" if settings.username is not None else "an anonymous client"
            raise MqttCheckError(f"auth: the broker refused the connection of {who}: {reason}"
                                 f"{auth_hint(reason, settings)}")
        passed(f"MQTT {settings.protocol}: connected as client id {client_id!r}"
               + (f", user {settings.username!r}" if settings.username is not None else ", anonymous"))
        client.subscribe(topic, qos=1)
        subscribed = _wait_either(done["suback"], done["closed"], timeout) and not (
            seen.get("suback") is None or seen["suback"].is_failure)
        info = client.publish(topic, payload, qos=1)
        if not _wait_either(done["puback"], done["closed"], timeout) or "puback" not in seen:
            raise MqttCheckError(f"publish: no PUBACK for {topic!r} within {timeout:g} s"
                                 f"{' (the broker closed the connection)' if 'closed' in seen else ''}")
        if seen["puback"].is_failure:
            raise MqttCheckError(f"ACL: the broker refused publishing to {topic!r}: {seen['puback']} "
                                 f"(reason 0x{seen['puback'].value:02X}); allow this client to write "
                                 f"'{settings.prefix.strip('/')}/{node}/#'")
        del info
        if subscribed:
            if not done["message"].wait(min(timeout, 3.0)):
                raise MqttCheckError(f"ACL: the publish to {topic!r} was acknowledged but never delivered: the broker "
                                     f"probably denied it (MQTT {settings.protocol} brokers drop denied messages "
                                     f"silently); allow this client to write '{settings.prefix.strip('/')}/{node}/#'")
            passed(f"publish: {topic} acknowledged (PUBACK) and delivered back to this client")
        else:
            passed(f"publish: {topic} acknowledged (PUBACK); delivery not verified "
                   "(this client may not subscribe to the test topic)")
    finally:
        client.disconnect()
        client.loop_stop()
    return steps


def _check_tls(sock: socket.socket, settings: MqttSettings, timeout: float) -> str:
    assert settings.tls is not None
    host, port = settings.host, settings.port
    try:
        tls_sock = ssl_context(settings.tls).wrap_socket(sock, server_hostname=host)
    except ssl.SSLError as exc:
        raise MqttCheckError(describe_error(exc, host, port)) from None
    except OSError as exc:
        raise MqttCheckError(f"TLS: {host}:{port} closed the connection during the handshake ({exc.strerror or exc}): "
                             "is it a TLS port (usually 8883)?") from None
    # TLS 1.3: a broker that refuses our client certificate says so only after the handshake
    tls_sock.settimeout(min(1.0, timeout))
    try:
        data = tls_sock.recv(1)
    except TimeoutError:
        data = None
    except (ssl.SSLError, OSError) as exc:
        raise MqttCheckError(describe_error(exc, host, port)) from None
    if data == b"":
        raise MqttCheckError(f"TLS: {host}:{port} closed the connection right after the handshake: it probably "
                             "refused our client certificate (or needs one): check mqtt.tls.cert_file/key_file")
    client_cert = " and accepted ours" if settings.tls.cert_file else ""
    checked = " (host name not checked: insecure)" if settings.tls.insecure else ""
    return f"TLS: {tls_sock.version()}, broker certificate verified{checked}{client_cert}"


def _wait_either(first: threading.Event, second: threading.Event, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if first.wait(0.05):
            return True
        if second.is_set():
            return first.is_set()
    return first.is_set()


