"""``edge-monitor mqtt-test``: connect to the configured broker, publish a test message, say exactly what failed."""

from __future__ import annotations

import argparse
import socket
from dataclasses import replace
from typing import Any

from edge_monitor.node.mqtt.connection import parse_url
from edge_monitor.node.mqtt.diagnosis import check_connection
from edge_monitor.node.settings import TlsSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="config.yaml: test the node's mqtt settings")
    source.add_argument("--url", help="mqtt://[user@]host[:port] or mqtts://... (TLS)")
    parser.add_argument("--node", help="node name for the test topic (default: the config's node, or the host name)")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), help="MQTT protocol version (default 5)")
    parser.add_argument("--password-file", help="read the password from this file")
    parser.add_argument("--password-env", help="read the password from this environment variable")
    parser.add_argument("--ca-file", help="TLS: CA certificate(s) to verify the broker with")
    parser.add_argument("--cert-file", help="TLS: client certificate")
    parser.add_argument("--key-file", help="TLS: client key")
    parser.add_argument("--insecure", action="store_true", help="TLS: do not check the broker's host name")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each step (default 10)")


def run(args: argparse.Namespace) -> int:
    node = args.node
    if args.config:
        from edge_monitor.node.config import (
            load,  # imported here: the node's config module
        )

        config = load(args.config)
        settings, node = config.mqtt, node or config.node
    else:
        settings = parse_url(args.url)
    overrides: dict[str, Any] = {}
    if args.protocol:
        overrides["protocol"] = args.protocol
    if args.password_file or args.password_env:
        overrides.update(password_file=args.password_file, password_env=args.password_env)
    if args.ca_file or args.cert_file or args.key_file or args.insecure:
        tls = settings.tls or TlsSettings()
        overrides["tls"] = replace(tls, ca_file=args.ca_file or tls.ca_file, cert_file=args.cert_file or tls.cert_file,
                                   key_file=args.key_file or tls.key_file, insecure=args.insecure or tls.insecure)
    settings = replace(settings, **overrides)
    node = node or socket.gethostname().split(".")[0]
    scheme = "mqtts" if settings.tls else "mqtt"
    print(f"mqtt-test: {scheme}://{settings.host}:{settings.port} as node {node!r}, MQTT {settings.protocol}",
          flush=True)
    check_connection(settings, node, args.timeout, report=lambda line: print(f"  ok  {line}", flush=True))
    print("mqtt-test: all checks passed")
    return 0
