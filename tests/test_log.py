"""The daemon's log lines under systemd are JSON, one per line, written from several threads at once
(a runner per monitor, the MQTT link, the main loop). Each line must reach the journal whole."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import threading
    import structlog
    from edge_monitor.node.log import configure

    configure("json", "info")
    log = structlog.get_logger()
    go = threading.Barrier(8)

    def talk(n):
        go.wait()
        for i in range(2000):
            log.info("state", monitor=f"fan-{n}", i=i, pad="x" * (n * 7))

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def test_lines_from_many_threads_stay_whole():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 8 * 2000
    records = [json.loads(line) for line in lines]  # a joined or split line fails here
    assert {(r["monitor"], r["i"]) for r in records} == {(f"fan-{n}", i) for n in range(8) for i in range(2000)}
