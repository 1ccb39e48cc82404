"""The state of the publisher's link to the broker, owned by one object, and its log lines.

Transitions (paho's network thread calls them; the outbox pump reads ``connected`` and ``generation``
under :attr:`Link.lock` and calls :meth:`Link.check_holds`):

``up``              CONNACK accepted: a new ``generation``; "mqtt connected" the first time, then
                    "mqtt reconnected" (with how long it was down), nothing while flapping.
``down``            an established link broke: "mqtt connection lost; retrying with backoff", or, the
                    second short link in a row (< ``SHORT_LINK_SECONDS``, each accepted at the first try),
                    the flapping problem once, with a longer backoff for the caller to set.
``connect_failed``  a try failed before CONNACK (DNS, TCP, TLS) or the broker refused the CONNECT.
``connect_timeout`` the broker accepted TCP (and TLS) but sent no CONNACK within the keepalive: paho closes
                    the socket and retries, silently unless said here.
``check_holds``     a flapping link has now stayed up ``SHORT_LINK_SECONDS``: "mqtt connection holds again".

Each problem is logged once per change (the same reason on every retry is said once); the current one is
:attr:`Link.problem` (None while connected and healthy).
"""

from __future__ import annotations

import threading
import time

import structlog

log = structlog.get_logger()

SHORT_LINK_SECONDS = 10.0   # two links in a row shorter than this: the broker keeps kicking us


class Link:
    """Connected or not, since when, how often, and what is wrong; see the module docstring."""

    def __init__(self, host: str, port: int, *, retry_max_seconds: float) -> None:
        self.host, self.port = host, port
        self.retry_max_seconds = retry_max_seconds
        self.lock = threading.Lock()       # held by the caller around ``connected``/``generation`` changes and reads
        self.connected = False
        self.generation = 0                # one more for each accepted CONNECT
        self.ever_connected = False
        self.connected_at = 0.0            # monotonic time of the last CONNACK
        self.short_links = 0               # links in a row that broke within SHORT_LINK_SECONDS
        self.down_since: float | None = None
        self.problem: str | None = None
        self.stopping = False

    @property
    def flapping(self) -> bool:
        return self.short_links >= 2

    # -- transitions -----------------------------------------------------------------------------
    def up(self, *, queued: int, **details: object) -> int:
        """CONNACK accepted; returns the new generation. Call with :attr:`lock` held."""
        self.generation += 1
        self.connected = True
        now = time.monotonic()
        self.connected_at = now
        if self.flapping:
            pass  # said once in down(), and again when the link holds (check_holds)
        elif self.ever_connected:
            log.info("mqtt reconnected", host=self.host, port=self.port, queued=queued,
                     down_seconds=round(now - (self.down_since or now), 1))
        else:
            log.info("mqtt connected", host=self.host, port=self.port, queued=queued, **details)
        self.ever_connected = True
        self.down_since = None
        if not self.flapping:
            self.problem = None
        return self.generation

    def down(self, reason: str, *, queued: int, retry_min_seconds: float) -> float | None:
        """The link broke (or a try ended before CONNACK). Returns a longer reconnect delay while flapping."""
        with self.lock:
            was_connected, self.connected = self.connected, False
        if self.stopping:
            return None
        if not was_connected:
            return None
        now = time.monotonic()
        self.down_since = now
        # A broker may close the link right after accepting it (mosquitto 2.0 does so after refusing a publish
        # by ACL): paho would reconnect at once, forever. Two short links in a row, each reconnect accepted at
        # the first try (a failed try resets the count: that is an outage): back off and say it once.
        self.short_links = self.short_links + 1 if now - self.connected_at < SHORT_LINK_SECONDS else 0
        if self.flapping:
            self._problem(f"the broker keeps closing the connection right after accepting it ({reason}); it "
                          "may refuse a topic we publish (run edge-monitor mqtt-test, check the broker's ACL "
                          "and log)", error=True)
            return min(self.retry_max_seconds, retry_min_seconds * 2 ** (self.short_links - 1))
        self.problem = None
        log.warning("mqtt connection lost; retrying with backoff", host=self.host, port=self.port, reason=reason,
                    queued=queued)
        return None

    def connect_failed(self, problem: str, *, error: bool = False) -> None:
        """A try failed before the link was up (DNS, TCP, TLS, or the broker refused the CONNECT)."""
        self.short_links = 0  # the broker was away or refused us: an outage, not a broker that kicks us
        self._problem(problem, error=error)

    def connect_timeout(self, seconds: float) -> None:
        """The broker took the TCP connection but never answered the CONNECT (paho gave up after the keepalive)."""
        self.connect_failed(f"MQTT: {self.host}:{self.port} accepted the connection but sent no CONNACK within "
                            f"{seconds:g} s (connect timeout): is it an MQTT broker, and TLS as configured "
                            "(mqtts://, mqtt.tls)? Run edge-monitor mqtt-test")

    def check_holds(self) -> bool:
        """True once, when a flapping link has stayed up ``SHORT_LINK_SECONDS`` (the caller resets the backoff)."""
        if not (self.flapping and self.connected and time.monotonic() - self.connected_at >= SHORT_LINK_SECONDS):
            return False
        self.short_links = 0
        self.problem = None
        log.info("mqtt connection holds again", host=self.host, port=self.port)
        return True

    def _problem(self, problem: str, *, error: bool = False) -> None:
        if problem == self.problem:
            return
        self.problem = problem
        (log.error if error else log.warning)("mqtt cannot connect; retrying with backoff", problem=problem,
                                              retry_max_seconds=self.retry_max_seconds)
