"""Fault trials: the scripted flow with a fault-injecting proxy between daemon and Forgejo.

The daemon reaches the in-memory Forgejo only through a proxy on loopback that, on a share
of the REST calls (git traffic passes untouched), answers 500 or 502 without forwarding,
answers 429 with ``Retry-After: 1``, resets the connection, or holds the request past the
client timeout — before forwarding it (the write lands after the client gave up) or after (the
write landed, the answer is lost). Comment creates and edits get the delays most often. For
the first seconds of each trial the forge is down (connections refused at the proxy), so the
daemon starts against a forge it cannot reach. Afterwards the invariants of
``bench/trials.py`` are checked: no duplicate or stale comment, no double dispatch, every
issue done, no stuck repository, no lost receipt.

    python bench/fault_trials.py                 # 30 trials (the acceptance figure)
    python bench/fault_trials.py --trials 2      # what CI runs through tests/test_trials.py
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trials import Trial, Violations, trial_forge

CLIENT_TIMEOUT = 1.5
"""The daemon's Forgejo timeout in the trials; held requests wait past it."""

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultProxy:
    """An HTTP proxy to ``upstream`` that disturbs a share of the API calls."""

    def __init__(self, upstream: str, *, rng: random.Random, rate: float, down_for: float):
        self.upstream = upstream.rstrip("/")
        self.rng = rng
        self.rate = rate
        self.down_until = time.monotonic() + down_for
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

    def _choose(self, method: str, path: str) -> str:
        if not path.startswith("/api/v1/"):
            return ""  # git smart HTTP passes untouched
        with self.lock:
            if time.monotonic() < self.down_until:
                self.injected["forge down"] += 1
                return "reset"
            comment_write = "/comments" in path and method in ("POST", "PATCH")
            rate = self.rate * (3 if comment_write else 1)
            if self.rng.random() >= rate:
                return ""
            if comment_write:
                fault = self.rng.choice(["delay-before", "delay-after", "500", "reset"])
            else:
                fault = self.rng.choice(
                    ["500", "502", "429", "reset", "delay-before", "delay-after"]
                )
            self.injected[fault] += 1
            if comment_write and fault.startswith("delay"):
                self.injected["comment write delayed"] += 1
                if method == "POST":
                    self.injected["comment create delayed"] += 1
            return fault

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        fault = self._choose(request.command, request.path)
        if fault == "reset":
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("500", "502"):
            self._answer(request, int(fault), b'{"message":"injected"}', {})
            return
        if fault == "429":
            self._answer(request, 429, b'{"message":"slow down"}', {"Retry-After": "1"})
            return
        if fault == "delay-before":
            time.sleep(CLIENT_TIMEOUT + 0.5)  # the client has given up; the write lands now
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        try:
            answer = self.client.request(
                request.command, self.upstream + request.path, content=body, headers=headers
            )
        except httpx.HTTPError:
            request.close_connection = True
            return
        if fault == "delay-after":
            time.sleep(CLIENT_TIMEOUT + 0.5)  # the write landed; the answer comes too late
        out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP}
        out.pop("content-encoding", None)
        self._answer(request, answer.status_code, answer.content, out)

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        try:
            request.send_response(status)
            for key, value in headers.items():
                request.send_header(key, value)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass  # the client gave up (timed out) before the answer


def fault_trial(
    seed: int, *, rate: float, down_for: float, deadline: float
) -> tuple[Violations, Counter[str]]:
    rng = random.Random(seed)
    with trial_forge() as (sandbox, root):
        proxy = FaultProxy(sandbox.url, rng=rng, rate=rate, down_for=down_for)
        proxy.start()
        trial = Trial(sandbox, root, proxy.url, timeout=CLIENT_TIMEOUT)
        try:
            trial.file_issues()
            proxy.down_until = time.monotonic() + down_for  # down from the daemon's start
            trial.daemon.start()
            trial.drive(until=time.monotonic() + deadline)
            with proxy.lock:
                proxy.rate = 0.0  # let the last writes settle cleanly before looking
            found = trial.check(settle=3 * CLIENT_TIMEOUT)
            if found.total():
                print(trial.log_tail(), flush=True)
            return found, proxy.injected
        finally:
            trial.close()
            proxy.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The scripted flow behind a faulty proxy.")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rate", type=float, default=0.08, help="share of API calls disturbed")
    parser.add_argument("--down-for", type=float, default=2.0, help="forge down at start (s)")
    parser.add_argument("--deadline", type=float, default=150.0, help="seconds per trial")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    failed = 0
    totals = Violations()
    injected: Counter[str] = Counter()
    for n in range(args.trials):
        found, faults = fault_trial(
            args.seed + n, rate=args.rate, down_for=args.down_for, deadline=args.deadline
        )
        injected += faults
        for name, items in vars(found).items():
            getattr(totals, name).extend(items)
        verdict = "ok" if found.total() == 0 else "VIOLATED " + "; ".join(found.lines())
        shown = ", ".join(f"{k} {v}" for k, v in sorted(faults.items()))
        print(f"trial {n + 1:>3}: faults [{shown}] {verdict}", flush=True)
        failed += found.unsafe() > 0
    print(f"\n{args.trials} fault trials; faults injected: {dict(sorted(injected.items()))}")
    print("(target: 0 of each below)")
    for name, items in vars(totals).items():
        print(f"  {name:<20} {len(items):>4}  {'PASS' if not items else 'MISS'}")
    # Exit status 1 on any safety violation; issues not done by the deadline are reported.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
