"""``python -m bench.slow_clients``: nginx's request buffering, decided by measurement.

The attack of the security issue, through ``deploy/nginx.conf``: ``SLOW`` clients start
a 1 MB upload to upstream ``other`` through nginx, send 70,000 bytes and then nothing;
meanwhile 40 ordinary requests (100 KB uploads to ``other``, GETs to ``files``) go
through the same nginx. One gateway worker (embedded backend), each upstream with a
pool of 20 connections and a 0.5 s pool wait, behind nginx with
``proxy_request_buffering`` off (how the file shipped) and on. Then a lone 5 MB upload,
five times: what buffering costs a legitimate large body. One run, printed as a table.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.localfleet.nginx import nginx_conf_for
from app.localfleet.ports import free_port
from app.localfleet.services import find_program, fleetbreaker_command, http_ok, serve_command

ROOT = Path(__file__).resolve().parent.parent
_NGINX_PATH = "/usr/sbin:/usr/local/sbin:/usr/bin"


@dataclass(frozen=True, slots=True)
class Outcome:
    buffering: str
    answered: int
    asked: int
    statuses: tuple[int, ...]
    p50_ms: float
    max_ms: float
    big_upload_ms: float


def _wait(url: str) -> None:
    for _ in range(200):  # bounded: 10 s
        if http_ok(url):
            return
        time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


def measure(buffering: str, slow: int) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix="fleetbreaker-bench-"))
    work.chmod(0o755)  # nginx's workers (another user, under root) write bodies there
    upstream, gateway, balancer = free_port(), free_port(), free_port()
    config = work / "gateway.toml"
    config.write_text(
        "[client]\nmax_connections = 20\npool_timeout = 0.5\n"
        f'[upstreams.other]\nurl = "http://127.0.0.1:{upstream}/"\n'
        f'[upstreams.files]\nurl = "http://127.0.0.1:{upstream}/"\n'
    )
    text = nginx_conf_for((ROOT / "deploy" / "nginx.conf").read_text(), balancer, [gateway])
    (work / "nginx.conf").write_text(
        text.replace("proxy_request_buffering on;", f"proxy_request_buffering {buffering};")
    )
    nginx = find_program("nginx", "apt-get install -y nginx", _NGINX_PATH)
    commands = [
        [*fleetbreaker_command(), "demo-upstream", "--port", str(upstream)],
        serve_command(gateway, free_port()),
        [nginx, "-p", f"{work}/", "-c", str(work / "nginx.conf"), "-e", "stderr", "-g",
         f"daemon off; pid {work}/nginx.pid;"],
    ]  # fmt: skip
    environ = {"BREAKER_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(  # noqa: S603 - our own programs on our own ports  # nosec B603
            command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for command in commands
    ]
    try:
        for url in (f"http://127.0.0.1:{upstream}/mode", f"http://127.0.0.1:{gateway}/healthz"):
            _wait(url)
        _wait(f"http://127.0.0.1:{balancer}/healthz")
        base = f"http://127.0.0.1:{balancer}/proxy"
        trickling = []
        for _ in range(slow):
            sock = socket.create_connection(("127.0.0.1", balancer))
            sock.sendall(
                b"POST /proxy/other/upload HTTP/1.1\r\nHost: g\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"x" * 70_000
            )
            trickling.append(sock)
        time.sleep(1.0)  # the uploads have reached whoever reads them
        statuses, took = [], []
        with httpx.Client(timeout=30.0) as client:
            for index in range(40):
                started = time.perf_counter()
                if index % 2:
                    answer = client.post(f"{base}/other/upload", content=b"y" * 100_000)
                else:
                    answer = client.get(f"{base}/files/page")
                took.append(time.perf_counter() - started)
                statuses.append(answer.status_code)
        for sock in trickling:
            sock.close()
        big = []
        with httpx.Client(timeout=30.0) as client:
            for _ in range(5):
                started = time.perf_counter()
                client.post(f"{base}/other/big", content=b"z" * 5_000_000)
                big.append(time.perf_counter() - started)
        return Outcome(
            buffering,
            statuses.count(200),
            len(statuses),
            tuple(sorted(set(statuses))),
            round(statistics.median(took) * 1000, 1),
            round(max(took) * 1000, 1),
            round(statistics.median(big) * 1000, 1),
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", type=int, default=150, help="trickling clients (150)")
    args = parser.parse_args()
    print("| request buffering | answered 200 | statuses | p50 ms | max ms | 5 MB upload ms |")
    print("|---|---|---|---|---|---|")
    for buffering in ("off", "on"):
        outcome = measure(buffering, args.slow)
        print(
            f"| {outcome.buffering} | {outcome.answered} of {outcome.asked} | "
            f"{', '.join(map(str, outcome.statuses))} | {outcome.p50_ms} | "
            f"{outcome.max_ms} | {outcome.big_upload_ms} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
