"""The bench: fluidity against a direct connection to the same origin, in one run.

Starts the bench origin (`tests.bench.origin`, its own process), the real server and agent
(`python -m fluidity.server` / `fluidity.agent` on 127.0.0.1, port 0, the server allowed to
reach loopback and resolving origin.test=127.0.0.1 statically), then measures each figure
directly against the origin (the machine's own limit) and through the agent:

* idle     RSS per idle open CONNECT stream (agent and server), before anything else has
           grown the heaps
* bulk-http  a 1 GiB download as plain HTTP (curl, `-x` for the proxied run); peak RSS and CPU
* bulk-tls   the same over HTTPS through CONNECT (curl, the trustme CA; `--resolve` direct)
* get      1 KiB GETs on 64 keep-alive connections for 5 s: req/s, p50, p99 (wrk if installed,
           else `tests.bench.loadgen`)
* ttfb     CONNECT time to first byte over 200 sequential tunnels to the TCP echo origin,
           after 100 untimed ones
* tunnels  1000 concurrent CONNECT tunnels, each echoing 64 KiB: total time and failures
* wan      (only when asked for: `--phases wan`) the same kinds of transfer across an emulated
           long path (tests/bench/wan.py, tests/bench/delayline.py)

Each phase first waits (up to --wait-quiet s) for other processes to leave the CPUs alone, and
the CPU other processes used during each run is recorded: figures taken on a busy machine are
flagged in the output. Every loop is bounded in count and in time. Targets are marked, never
enforced: the exit status is 0 whatever the figures (1 only if a phase could not run). With
`--profile` py-spy records the agent and the server during the proxied runs of the bulk, GET,
ttfb and tunnels phases (figures taken under a profiler are a little lower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trustme

from tests.bench.peers import Peer, run_peers, wanted
from tests.support.pki import Pki, make_pki
from tests.support.processes import (
    SERVER_TEST_ENV,
    Running,
    agent_args,
    run_fluidity,
    server_args,
)

REPO = Path(__file__).resolve().parents[2]
ORIGIN_NAME = "origin.test"
MB = 1_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB
_NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


# -- /proc ------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / _TICK


def own_cpu_seconds() -> float:
    """This process and its reaped children (curl, wrk, the load generator)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@attrs.define
class Watch:
    """Peak RSS (polled) and CPU use of some processes over a block.

    `background_cpu_percent` is what everything else on the machine used meanwhile (other
    people's test runs, say): the figures of a block with much of it are disturbed.
    """

    pids: dict[str, int]
    interval: float
    peak_kib: dict[str, int] = attrs.field(factory=dict)
    cpu_percent: dict[str, float] = attrs.field(factory=dict)
    background_cpu_percent: float = 0.0
    seconds: float = 0.0

    async def poll(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak_kib[name] = max(self.peak_kib.get(name, 0), rss_kib(pid))
            await trio.sleep(self.interval)

    def summary(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": {n: round(k * 1024 / MB, 1) for n, k in self.peak_kib.items()},
            "cpu_percent_of_one_core": self.cpu_percent,
            "background_cpu_percent": self.background_cpu_percent,
            "watched_seconds": round(self.seconds, 3),
        }


@asynccontextmanager
async def watch(
    pids: dict[str, int], others: dict[str, int] | None = None, interval: float = 0.02
) -> AsyncIterator[Watch]:
    """Watch `pids`; `others` (also ours, idle here) only count as not background."""
    watched = Watch(pids, interval)
    everyone = {**(others or {}), **pids}
    cpu_before = {n: cpu_seconds(p) for n, p in everyone.items()}
    machine_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watched.poll)
        try:
            yield watched
        finally:
            nursery.cancel_scope.cancel()
    watched.seconds = elapsed = time.perf_counter() - start
    used = {n: cpu_seconds(p) - cpu_before[n] for n, p in everyone.items()}
    watched.cpu_percent = {n: round(100 * used[n] / elapsed, 1) for n in pids}
    background = machine_busy_seconds() - machine_before - sum(used.values())
    background -= own_cpu_seconds() - own_before
    watched.background_cpu_percent = round(max(0.0, 100 * background / elapsed), 1)


# -- the bench ----------------------------------------------------------------------------------


@attrs.define
class Bench:
    args: argparse.Namespace
    workdir: Path
    origin_ca: Path
    origin: Running
    server: Running
    agent: Running
    profile_dir: Path | None
    pki: Pki
    peers: dict[str, Peer] = attrs.field(factory=dict)
    #: The trio + h11 server alone (tests/bench/floor.py): the GET phase's floor.
    floor: Running | None = None

    @property
    def http_port(self) -> int:
        return int(self.origin.info["listen_port"])

    @property
    def https_port(self) -> int:
        return int(self.origin.info["https_port"])

    @property
    def echo_port(self) -> int:
        return int(self.origin.info["echo_port"])

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"

    def pid(self, running: Running) -> int:
        return int(running.info.get("pid") or running.process.pid)

    @property
    def pids(self) -> dict[str, int]:
        return {
            "agent": self.pid(self.agent),
            "server": self.pid(self.server),
            "origin": self.pid(self.origin),
        }

    def check_alive(self) -> None:
        floor = (self.floor,) if self.floor is not None else ()
        for running in (self.origin, self.server, self.agent, *floor):
            if running.process.poll() is not None:
                raise RuntimeError(f"{running.name} exited:\n{running.log()[-4000:]}")
        for peer in self.peers.values():
            peer.check_alive()

    def proxies(self) -> list[Proxied]:
        """Fluidity, then each peer: what the phases measure beside the direct run."""
        out = [Proxied("fluidity", self.agent.port, ORIGIN_NAME, self.pids, None)]
        for peer in self.peers.values():
            out.append(Proxied(peer.name, peer.port, "127.0.0.1", peer.pids, peer))
        return out


@attrs.frozen
class Proxied:
    """A proxy under test: fluidity's agent or a peer, and how it names the origin."""

    name: str
    port: int
    host: str
    pids: dict[str, int]
    peer: Peer | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _clean_env() -> dict[str, str]:
    """The environment for client tools: no proxy variables (curl would honour them)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


async def fetch_json(port: int, path: str) -> dict[str, Any]:
    """GET a small JSON document over a fresh connection (the agent's /healthz)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            await stream.send_all(request.encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    body = data.partition(b"\r\n\r\n")[2]
    result: dict[str, Any] = json.loads(body)
    return result


async def wait_tunnel_up(bench: Bench) -> None:
    """Wait until the agent's link is up (or asleep: then the warm-up request wakes it)."""
    try:
        with trio.fail_after(30):
            while (await fetch_json(bench.agent.port, "/healthz")).get("tunnel") not in (
                "up",
                "asleep",
            ):
                bench.check_alive()
                await trio.sleep(0.1)
    except trio.TooSlowError:
        raise RuntimeError(f"the agent's tunnel is not up:\n{bench.agent.log()[-4000:]}") from None


async def wait_quiet(bench: Bench) -> float:
    """Wait (at most --wait-quiet seconds) until other processes leave the CPUs alone.

    Returns the background CPU (% of one core) of the last one-second sample.
    """
    background = 0.0
    with trio.move_on_after(bench.args.wait_quiet):
        while True:
            async with watch({}, bench.pids) as w:
                await trio.sleep(1.0)
            background = w.background_cpu_percent
            if background < 15:
                break
    return background


async def settle(bench: Bench, limit: float = 20.0, proxied: Proxied | None = None) -> int:
    """Wait (bounded) until the agent has no open streams; returns how many were left.

    A peer has no such count: its runs are followed by a short pause instead.
    """
    bench.check_alive()
    if proxied is not None and proxied.peer is not None:
        await trio.sleep(0.5)
        return 0
    open_streams = -1
    with trio.move_on_after(limit):
        while True:
            health = await fetch_json(bench.agent.port, "/healthz")
            open_streams = int(health.get("open_streams", 0))
            if open_streams == 0:
                break
            await trio.sleep(0.1)
    await trio.sleep(0.3)
    return open_streams


@asynccontextmanager
async def profiled(bench: Bench, phase: str, enabled: bool = True) -> AsyncIterator[None]:
    """py-spy records the agent and the server for the block (when --profile is on)."""
    if bench.profile_dir is None or not enabled:
        yield
        return
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    processes: list[trio.Process] = []
    with open(bench.profile_dir / "py-spy.log", "ab") as log:  # noqa: ASYNC230 - local, once
        try:
            for name in ("agent", "server"):
                out = bench.profile_dir / f"{phase}-{name}.txt"
                command = [
                    pyspy,
                    "record",
                    "--pid",
                    str(bench.pids[name]),
                    "--rate",
                    str(bench.args.profile_rate),
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ]
                processes.append(
                    await trio.lowlevel.open_process(command, stdout=log, stderr=subprocess.STDOUT)
                )
            await trio.sleep(1.0)  # let py-spy attach
            yield
        finally:
            with trio.CancelScope(shield=True):
                for process in processes:
                    if process.returncode is None:
                        process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                with trio.move_on_after(30):
                    for process in processes:
                        await process.wait()
                for process in processes:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


# -- 1. bulk downloads with curl ----------------------------------------------------------------


def curl_command(bench: Bench, *, proxy: str | None, port: int, tls: bool) -> list[str]:
    """curl, quiet, capped at --bulk-timeout per transfer, through `proxy` (`-x`) or
    straight to 127.0.0.1:`port` (`--resolve`), trusting the origin's CA for `tls`."""
    args = ["curl", "-sS", "--max-time", str(bench.args.bulk_timeout)]
    if proxy is not None:
        args += ["-x", proxy]
    else:
        args += ["--noproxy", "*", "--resolve", f"{ORIGIN_NAME}:{port}:127.0.0.1"]
    if tls:
        args += ["--cacert", str(bench.origin_ca)]
    return args


async def curl_download(
    bench: Bench, url: str, *, proxy: str | None, port: int, size: int
) -> dict[str, Any]:
    args = curl_command(bench, proxy=proxy, port=port, tls=url.startswith("https:"))
    args += [
        "-o",
        "/dev/null",
        "-w",
        "%{speed_download} %{size_download} %{http_code} %{time_total}",
    ]
    args.append(url)
    with trio.fail_after(bench.args.bulk_timeout + 30):
        result = await trio.run_process(
            args, capture_stdout=True, capture_stderr=True, check=False, env=_clean_env()
        )
    try:
        speed, got, code, total = result.stdout.decode().split()
    except ValueError:
        speed, got, code, total = "0", "0", "000", "0"
    ok = result.returncode == 0 and int(got) == size and code == "200"
    out: dict[str, Any] = {
        "MBps": round(float(speed) / MB, 1),
        "bytes": int(got),
        "seconds": float(total),
        "ok": ok,
    }
    if not ok:
        out["error"] = f"curl exit {result.returncode}, status {code}: " + result.stderr.decode()
    return out


async def phase_bulk(bench: Bench, *, tls: bool) -> dict[str, Any]:
    port = bench.https_port if tls else bench.http_port
    scheme = "https" if tls else "http"
    size = bench.args.size
    url = f"{scheme}://{ORIGIN_NAME}:{port}/stream?n={size}"
    proxies = bench.proxies()
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], **{p.name: [] for p in proxies}}
    phase = "bulk-tls" if tls else "bulk-http"
    for run in range(bench.args.repeat):
        label = phase if bench.args.repeat == 1 else f"{phase}-{run + 1}"
        async with watch({"origin": bench.pids["origin"]}, bench.pids) as direct_watch:
            direct = await curl_download(bench, url, proxy=None, port=port, size=size)
        runs["direct"].append({**direct, **direct_watch.summary()})
        await settle(bench)
        for proxied in proxies:  # alternated run by run: a busy spell hits each alike
            target = url.replace(ORIGIN_NAME, proxied.host)
            is_fluidity = proxied.peer is None
            async with profiled(bench, label, is_fluidity), watch(proxied.pids, bench.pids) as w:
                through = await curl_download(
                    bench, target, proxy=proxied.url, port=port, size=size
                )
            runs[proxied.name].append({**through, **w.summary()})
            await settle(bench, proxied=proxied)
    # The best run of each (with --repeat): other load on the machine only ever slows it.
    out: dict[str, Any] = {
        mode: max(results, key=lambda r: (r["ok"], r["MBps"])) for mode, results in runs.items()
    }
    if bench.args.repeat > 1:
        out["runs"] = runs
        for proxied in proxies:
            peaks = [r["peak_rss_mb"] for r in runs[proxied.name]]
            out[proxied.name] = {
                **out[proxied.name],
                "peak_rss_mb": {n: max(p.get(n, 0) for p in peaks) for n in peaks[0]},
            }
    return out


# -- 2. 1 KiB GETs ----------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "GET"
wrk.path = "@PATH@"
wrk.headers["Host"] = "@HOST@"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, " ..
    "\\"p99_us\\": %d, \\"max_us\\": %d, \\"errors\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def loadgen_tool(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return choice


async def run_load(bench: Bench, port: int, path: str, host_header: str) -> dict[str, Any]:
    args = bench.args
    tool = loadgen_tool(args.loadgen)
    if tool == "wrk":
        script = bench.workdir / "bench.lua"
        script.write_text(_WRK_SCRIPT.replace("@PATH@", path).replace("@HOST@", host_header))
        command = [
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{args.duration:g}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "tests.bench.loadgen",
            "--port",
            str(port),
            "--path",
            path,
            "--host-header",
            host_header,
            "--connections",
            str(args.connections),
            "--duration",
            str(args.duration),
            "--max-requests",
            str(args.max_requests),
        ]
    env = {**_clean_env(), "PYTHONPATH": str(REPO)}
    with trio.fail_after(args.duration + 60):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    text = result.stdout.decode(errors="replace")
    if tool == "wrk":
        line = next((x for x in text.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {text} {result.stderr.decode()}")
        raw = json.loads(line.split(" ", 1)[1])
        seconds = raw["duration_us"] / 1e6
        return {
            "tool": "wrk",
            "requests": raw["requests"],
            "errors": raw["errors"],
            "seconds": round(seconds, 3),
            "requests_per_second": round(raw["requests"] / seconds, 1),
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000,
        }
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed: {result.stderr.decode(errors='replace')}")
    data: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return data


async def phase_get(bench: Bench) -> dict[str, Any]:
    n = bench.args.get_size
    authority = f"{ORIGIN_NAME}:{bench.http_port}"
    async with watch({"origin": bench.pids["origin"]}, bench.pids) as direct_watch:
        direct = await run_load(bench, bench.http_port, f"/stream?n={n}", authority)
    direct.update(direct_watch.summary())
    await settle(bench)
    out: dict[str, Any] = {"direct": direct}
    if bench.floor is not None:
        # The same load on the trio + h11 server alone: what one process of ours costs at
        # the least (tests/bench/floor.py).
        pid = bench.pid(bench.floor)
        async with watch({"floor": pid}, {**bench.pids, "floor": pid}) as floor_watch:
            port = int(bench.floor.info["listen_port"])
            floor = await run_load(bench, port, f"/stream?n={n}", f"127.0.0.1:{port}")
        floor.update(floor_watch.summary())
        out["floor"] = floor
        await settle(bench)
    for proxied in bench.proxies():
        authority = f"{proxied.host}:{bench.http_port}"
        async with (
            profiled(bench, "get", proxied.peer is None),
            watch(proxied.pids, bench.pids) as w,
        ):
            through = await run_load(
                bench, proxied.port, f"http://{authority}/stream?n={n}", authority
            )
        through.update(w.summary())
        out[proxied.name] = through
        await settle(bench, proxied=proxied)
    return out


# -- CONNECT helpers ------------------------------------------------------------------------------


async def connect_loopback(port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port, the way a C client makes one.

    trio.open_tcp_stream runs happy eyeballs (a resolver call, a nursery, a task per attempt),
    which cost the measuring client 50-80 us per connection: more than curl or a browser
    spends, so it would be counted as the proxy's latency.
    """
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def open_connect(port: int, authority: str) -> trio.SocketStream:
    """A CONNECT through the agent, answered 200; raises ConnectionError otherwise."""
    stream = await connect_loopback(port)
    try:
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
        await stream.send_all(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise ConnectionError(f"proxy closed during the CONNECT answer: {head!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT answered {head.splitlines()[0]!r}")
        if not head.endswith(b"\r\n\r\n"):
            raise ConnectionError("bytes after the CONNECT answer before anything was sent")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return describe(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"[:200]


def ms_percentiles(samples: list[float]) -> dict[str, float | None]:
    ordered = sorted(samples)

    def pick(q: float) -> float | None:
        if not ordered:
            return None
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50_ms": pick(50), "p99_ms": pick(99), "max_ms": pick(100)}


# -- 3. CONNECT time to first byte --------------------------------------------------------------


async def phase_ttfb(bench: Bench) -> dict[str, Any]:
    count = bench.args.ttfb_count
    clock = time.perf_counter

    async def once(proxied: Proxied | None) -> tuple[float, float | None]:
        start = clock()
        head_at: float | None = None
        if proxied is not None:
            authority = f"{proxied.host}:{bench.echo_port}"
            stream = await open_connect(proxied.port, authority)
            head_at = clock() - start
        else:
            stream = await connect_loopback(bench.echo_port)
        async with stream:
            await stream.send_all(b"x")
            if not await stream.receive_some(1):
                raise ConnectionError("no echo")
            return clock() - start, head_at

    out: dict[str, Any] = {}
    runs: list[tuple[str, Proxied | None]] = [("direct", None)]
    runs += [(proxied.name, proxied) for proxied in bench.proxies()]
    for mode, proxied in runs:
        first: list[float] = []
        heads: list[float] = []
        failures: Counter[str] = Counter()
        watched = {"origin": bench.pids["origin"]} if proxied is None else proxied.pids
        # Untimed first: right after the quiet wait the idle CPUs run the first ~100 ms
        # slower (the first 100-200 tunnels took 0.08 ms longer each, direct ones too).
        with trio.move_on_after(bench.args.phase_timeout):
            for _ in range(bench.args.ttfb_warmup):
                try:
                    with trio.fail_after(5):
                        await once(proxied)
                except (*_NETWORK_ERRORS, ConnectionError) as exc:
                    failures[f"warm-up: {describe(exc)}"] += 1
        async with profiled(bench, "ttfb", mode == "fluidity"), watch(watched, bench.pids) as w:
            with trio.move_on_after(bench.args.phase_timeout):
                for _ in range(count):
                    try:
                        with trio.fail_after(5):
                            total, head = await once(proxied)
                    except (*_NETWORK_ERRORS, ConnectionError) as exc:
                        failures[describe(exc)] += 1
                        continue
                    first.append(total)
                    if head is not None:
                        heads.append(head)
        result: dict[str, Any] = {
            "tunnels": len(first),
            "failures": dict(failures),
            "cpu_percent_of_one_core": w.cpu_percent,
            "background_cpu_percent": w.background_cpu_percent,
            "watched_seconds": round(w.seconds, 3),
        }
        if first:  # CPU per tunnel: what each process spends to open, use and close one
            result["cpu_us_per_tunnel"] = {
                name: round(percent / 100 * w.seconds / len(first) * 1e6)
                for name, percent in w.cpu_percent.items()
            }
        result.update(ms_percentiles(first))
        if heads:
            result["head"] = ms_percentiles(heads)
        out[mode] = result
        await settle(bench, proxied=proxied)
    return out


# -- 4. many concurrent tunnels -------------------------------------------------------------------


async def phase_tunnels(bench: Bench) -> dict[str, Any]:
    n = bench.args.tunnels
    payload = os.urandom(bench.args.tunnel_bytes)

    async def one(proxied: Proxied | None, failures: Counter[str], done: list[float]) -> None:
        try:
            with trio.fail_after(bench.args.phase_timeout):
                if proxied is not None:
                    authority = f"{proxied.host}:{bench.echo_port}"
                    stream = await open_connect(proxied.port, authority)
                else:
                    stream = await connect_loopback(bench.echo_port)
                async with stream:
                    received = bytearray()

                    async def send() -> None:
                        await stream.send_all(payload)
                        # pproxy and squid end a tunnel at the client's EOF, before the echo
                        # is back: to them the client sends none and closes once it has all.
                        if proxied is None or proxied.peer is None:
                            await stream.send_eof()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(send)
                        while len(received) < len(payload):
                            if not (data := await stream.receive_some(65536)):
                                break
                            received += data
                if received != payload:
                    raise ValueError(f"echoed {len(received)} bytes, not the {len(payload)} sent")
        except Exception as exc:  # every failure is counted, by kind
            failures[describe(exc)] += 1
        else:
            done.append(time.perf_counter())

    out: dict[str, Any] = {}
    runs: list[tuple[str, Proxied | None]] = [("direct", None)]
    runs += [(proxied.name, proxied) for proxied in bench.proxies()]
    for mode, proxied in runs:
        failures: Counter[str] = Counter()
        done: list[float] = []
        pids = {"origin": bench.pids["origin"]} if proxied is None else proxied.pids
        async with profiled(bench, "tunnels", mode == "fluidity"), watch(pids, bench.pids) as w:
            start = time.perf_counter()
            with trio.move_on_after(bench.args.phase_timeout):
                async with trio.open_nursery() as nursery:
                    for _ in range(n):
                        nursery.start_soon(one, proxied, failures, done)
            seconds = time.perf_counter() - start
        unfinished = n - len(done) - sum(failures.values())
        if unfinished:
            failures["unfinished when the phase timed out"] += unfinished
        out[mode] = {
            "tunnels": n,
            "bytes_each": len(payload),
            "seconds": round(seconds, 3),
            "last_done_seconds": round(max(done) - start, 3) if done else None,
            "failures": sum(failures.values()),
            "failure_kinds": dict(failures.most_common(5)),
            **w.summary(),
        }
        await settle(bench, proxied=proxied)
    return out


# -- 5. RSS per idle stream ---------------------------------------------------------------------


async def phase_idle(bench: Bench) -> dict[str, Any]:
    n = bench.args.idle_streams
    authority = f"{ORIGIN_NAME}:{bench.echo_port}"
    pids = {"agent": bench.pids["agent"], "server": bench.pids["server"]}
    streams: list[trio.SocketStream] = []
    failures: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(64)

    async def open_one() -> None:
        try:
            async with limiter:
                stream = await open_connect(bench.agent.port, authority)
                streams.append(stream)
                await stream.send_all(b"x")  # the server's relay to the origin is running
                if not await stream.receive_some(1):
                    raise ConnectionError("no echo")
        except (*_NETWORK_ERRORS, ConnectionError) as exc:
            failures[describe(exc)] += 1

    async def sample() -> dict[str, int]:
        # The median of a few samples: RSS moves a little on its own (timers, logging).
        samples: dict[str, list[int]] = {name: [] for name in pids}
        for _ in range(5):
            for name, pid in pids.items():
                samples[name].append(rss_kib(pid))
            await trio.sleep(0.1)
        return {name: sorted(values)[2] for name, values in samples.items()}

    before = await sample()
    try:
        with trio.move_on_after(bench.args.phase_timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(open_one)
        await trio.sleep(1.0)
        after = await sample()
        health = await fetch_json(bench.agent.port, "/healthz")
    finally:
        with trio.CancelScope(shield=True):
            for stream in streams:
                await trio.aclose_forcefully(stream)
    opened = n - sum(failures.values())
    result: dict[str, Any] = {
        "streams": n,
        "opened": opened,
        "agent_open_streams": health.get("open_streams"),
        "failures": dict(failures.most_common(5)),
        "rss_before_kib": before,
        "rss_after_kib": after,
    }
    for name in pids:
        delta = after[name] - before[name]
        result[f"{name}_kib_per_stream"] = round(delta / opened, 2) if opened else None
    await settle(bench)
    return result


# -- warm-up ------------------------------------------------------------------------------------


async def warm_up(bench: Bench) -> None:
    """Touch every path once so first-use costs (imports, pools, TLS) stay out of the figures."""
    for scheme, port in (("http", bench.http_port), ("https", bench.https_port)):
        url = f"{scheme}://{ORIGIN_NAME}:{port}/stream?n=100000"
        result = await curl_download(bench, url, proxy=bench.proxy, port=port, size=100000)
        if not result["ok"]:
            raise RuntimeError(f"warm-up through the agent failed: {result.get('error')}")
    for _ in range(20):
        with trio.fail_after(5):
            stream = await open_connect(bench.agent.port, f"{ORIGIN_NAME}:{bench.echo_port}")
            async with stream:
                await stream.send_all(b"warm")
                await stream.receive_some(4)
    await settle(bench)


# -- results ----------------------------------------------------------------------------------


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


@attrs.frozen
class Row:
    metric: str
    unit: str
    direct: float | None
    fluidity: float | None
    target: str
    ok: bool | None
    #: The same figure for each peer run beside fluidity (tests/bench/peers.py).
    peers: dict[str, float | None] = attrs.field(factory=dict)

    @property
    def ratio(self) -> float | None:
        return _ratio(self.fluidity, self.direct)

    def peer_ratio(self, name: str) -> float | None:
        """fluidity / peer: above 1 is better for rates, worse for times, memory and CPU."""
        return _ratio(self.fluidity, self.peers.get(name))


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or not base:
        return None
    return value / base


def _at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def _below(value: float | None, limit: float) -> bool | None:
    return None if value is None else value < limit


def size_label(n: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def cpu_seconds_used(result: dict[str, Any] | None, role: str) -> float | None:
    """CPU seconds a process used over a watched run (from its % of one core)."""
    percent = _get(result or {}, "cpu_percent_of_one_core", role)
    seconds = _get(result or {}, "watched_seconds")
    if percent is None or seconds is None:
        return None
    return float(percent) / 100 * float(seconds)


def cpu_per_gib(result: dict[str, Any] | None, role: str) -> float | None:
    used = cpu_seconds_used(result, role)
    moved = _get(result or {}, "bytes")
    return None if used is None or not moved else round(used / (moved / GIB), 3)


def cpu_per_thousand(result: dict[str, Any] | None, role: str, count_key: str) -> float | None:
    used = cpu_seconds_used(result, role)
    count = _get(result or {}, count_key)
    return None if used is None or not count else round(used / count * 1000, 3)


def peak_of(phases: dict[str, Any], mode: str, role: str, keys: tuple[str, ...]) -> float | None:
    known = [_get(phases, key, mode, "peak_rss_mb", role) for key in keys]
    values = [v for v in known if v is not None]
    return max(values) if values else None


def rows(phases: dict[str, Any], bulk_size: int = GIB, peers: tuple[str, ...] = ()) -> list[Row]:
    out: list[Row] = []
    size = size_label(bulk_size)

    def of(*path: str) -> dict[str, float | None]:
        """The figure at `path` under each peer's results (path starts with the phase)."""
        return {name: _get(phases, path[0], name, *path[1:]) for name in peers}

    for key, label, limit in (("bulk-http", "plain HTTP", 200), ("bulk-tls", "CONNECT+TLS", 250)):
        d = _get(phases, key, "direct", "MBps")
        f = _get(phases, key, "fluidity", "MBps")
        ok = _at_least(f, limit) if _get(phases, key, "fluidity", "ok") is not False else False
        out.append(Row(f"{label} bulk, {size}", "MB/s", d, f, f">= {limit}", ok, of(key, "MBps")))
    d_rps = _get(phases, "get", "direct", "requests_per_second")
    f_rps = _get(phases, "get", "fluidity", "requests_per_second")
    out.append(
        Row(
            "1 KiB GET, 64 conns",
            "req/s",
            d_rps,
            f_rps,
            ">= 5000",
            _at_least(f_rps, 5000),
            of("get", "requests_per_second"),
        )
    )
    for q, target in (("p50", ""), ("p99", "< 30")):
        d = _get(phases, "get", "direct", f"{q}_ms")
        f = _get(phases, "get", "fluidity", f"{q}_ms")
        ok = _below(f, 30) if target else None
        out.append(Row(f"1 KiB GET latency {q}", "ms", d, f, target, ok, of("get", f"{q}_ms")))
    out.append(
        Row(
            "1 KiB GET errors",
            "",
            _get(phases, "get", "direct", "errors"),
            _get(phases, "get", "fluidity", "errors"),
            "",
            None,
            of("get", "errors"),
        )
    )
    for q, target in (("p50", "< 1.5"), ("p99", "")):
        d = _get(phases, "ttfb", "direct", f"{q}_ms")
        f = _get(phases, "ttfb", "fluidity", f"{q}_ms")
        ok = _below(f, 1.5) if target else None
        out.append(Row(f"CONNECT first byte {q}", "ms", d, f, target, ok, of("ttfb", f"{q}_ms")))
    out.append(
        Row(
            "CONNECT 200 head p50",
            "ms",
            None,
            _get(phases, "ttfb", "fluidity", "head", "p50_ms"),
            "",
            None,
            of("ttfb", "head", "p50_ms"),
        )
    )
    d_s = _get(phases, "tunnels", "direct", "seconds")
    f_s = _get(phases, "tunnels", "fluidity", "seconds")
    d_fail = _get(phases, "tunnels", "direct", "failures")
    f_fail = _get(phases, "tunnels", "fluidity", "failures")
    n = _get(phases, "tunnels", "fluidity", "tunnels") or 1000
    each = (_get(phases, "tunnels", "fluidity", "bytes_each") or 65536) // 1024
    ok = None if f_s is None else (f_s < 3 and f_fail == 0)
    out.append(
        Row(
            f"{n} tunnels x {each} KiB echo",
            "s",
            d_s,
            f_s,
            "< 3, 0 failures",
            ok,
            of("tunnels", "seconds"),
        )
    )
    out.append(
        Row(
            f"{n} tunnels: failures",
            "",
            d_fail,
            f_fail,
            "0",
            None if f_fail is None else f_fail == 0,
            of("tunnels", "failures"),
        )
    )
    # Per process: a peer's client-side process is its "agent", the one that reaches the
    # origin its "server" (squid, one hop, has only that).
    bulk = ("bulk-http", "bulk-tls")
    for name in ("agent", "server"):
        peak = peak_of(phases, "fluidity", name, bulk)
        out.append(
            Row(
                f"{name} peak RSS, {size} transfers",
                "MB",
                None,
                peak,
                "< 150",
                _below(peak, 150),
                {peer: peak_of(phases, peer, name, bulk) for peer in peers},
            )
        )
    for name in ("agent", "server"):
        peak = _get(phases, "tunnels", "fluidity", "peak_rss_mb", name)
        out.append(
            Row(
                f"{name} peak RSS, {n} tunnels",
                "MB",
                None,
                peak,
                "",
                None,
                of("tunnels", "peak_rss_mb", name),
            )
        )
    everything = ("bulk-http", "bulk-tls", "get", "tunnels")

    def total_peak(mode: str) -> float | None:
        parts = [peak_of(phases, mode, role, everything) for role in ("agent", "server")]
        known = [p for p in parts if p is not None]
        return round(sum(known), 1) if known else None

    total = total_peak("fluidity")
    out.append(
        Row(
            "peak RSS, all processes",
            "MB",
            None,
            total,
            "<= 150",
            None if total is None else total <= 150,
            {peer: total_peak(peer) for peer in peers},
        )
    )
    for name in ("agent", "server"):
        per = _get(phases, "idle", f"{name}_kib_per_stream")
        out.append(Row(f"{name} RSS per idle stream", "KiB", None, per, "< 50", _below(per, 50)))
    # What a unit of work costs each process, CPU seconds: what a Fargate task's vCPU buys.
    for name in ("agent", "server"):
        for key, label in (("bulk-http", "plain HTTP"), ("bulk-tls", "CONNECT+TLS")):
            out.append(
                Row(
                    f"{name} CPU per GiB, {label}",
                    "s",
                    None,
                    cpu_per_gib(_get(phases, key, "fluidity"), name),
                    "",
                    None,
                    {peer: cpu_per_gib(_get(phases, key, peer), name) for peer in peers},
                )
            )
        out.append(
            Row(
                f"{name} CPU per 1,000 GETs",
                "s",
                None,
                cpu_per_thousand(_get(phases, "get", "fluidity"), name, "requests"),
                "",
                None,
                {
                    peer: cpu_per_thousand(_get(phases, "get", peer), name, "requests")
                    for peer in peers
                },
            )
        )
        out.append(
            Row(
                f"{name} CPU per 1,000 tunnels",
                "s",
                None,
                cpu_per_thousand(_get(phases, "tunnels", "fluidity"), name, "tunnels"),
                "",
                None,
                {
                    peer: cpu_per_thousand(_get(phases, "tunnels", peer), name, "tunnels")
                    for peer in peers
                },
            )
        )
    # The stack's floor: a trio + h11 server alone under the same load (tests/bench/floor.py).
    floor = cpu_per_thousand(_get(phases, "get", "floor"), "floor", "requests")
    if floor:
        out.append(Row("trio+h11 server alone, CPU per 1,000 GETs", "s", None, floor, "", None))

        def over_floor(mode: str, role: str) -> float | None:
            cpu = cpu_per_thousand(_get(phases, "get", mode), role, "requests")
            return None if cpu is None else round(cpu / floor, 2)

        for name in ("agent", "server"):
            out.append(
                Row(
                    f"{name} CPU per GET / trio+h11 floor",
                    "x",
                    None,
                    over_floor("fluidity", name),
                    "",
                    None,
                    {peer: over_floor(peer, name) for peer in peers},
                )
            )
    if "wan" in phases:
        from .wan import wan_rows

        out += wan_rows(phases["wan"])
    # Rows of phases that did not run (or failed: their errors are printed) are left out.
    return [
        row
        for row in out
        if row.direct is not None
        or row.fluidity is not None
        or any(v is not None for v in row.peers.values())
    ]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) < 1:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


@attrs.frozen
class PeerTarget:
    """A target stated as a ratio to a peer measured in the same run (issue 16)."""

    #: The row's metric, as `rows()` names it.
    metric: str
    peer: str
    #: fluidity / peer must be at least this (rates) or at most this (times, memory).
    limit: float
    at_least: bool
    text: str


PEER_TARGETS = (
    PeerTarget("plain HTTP bulk", "pproxy", 1.0, True, "plain HTTP bulk >= 1.0x pproxy"),
    PeerTarget("CONNECT+TLS bulk", "pproxy", 1.0, True, "CONNECT+TLS bulk >= 1.0x pproxy"),
    PeerTarget("1 KiB GET, 64 conns", "squid", 0.5, True, "1 KiB GETs >= 0.5x squid"),
    PeerTarget("1 KiB GET latency p99", "squid", 2.0, False, "GET p99 <= 2x squid's"),
    PeerTarget("CONNECT first byte p50", "pproxy", 1.0, False, "first byte p50 below pproxy's"),
)


def peer_target_lines(table: list[Row]) -> list[str]:
    """Each ratio target whose peer ran, with this run's ratio and PASS / MISS."""
    lines = []
    for target in PEER_TARGETS:
        row = next((r for r in table if r.metric.startswith(target.metric)), None)
        ratio = None if row is None else row.peer_ratio(target.peer)
        if ratio is None:
            continue
        ok = ratio >= target.limit if target.at_least else ratio < target.limit
        lines.append(f"  {target.text}: {ratio:.2f}x {'PASS' if ok else 'MISS'}")
    return lines


def render_table(table: list[Row], peers: tuple[str, ...] = ()) -> str:
    """The table; beside each peer's figure, fluidity / peer."""
    header: tuple[str, ...] = ("metric", "unit", "direct", "fluidity", "ratio")
    for peer in peers:
        header += (peer, f"f/{peer}")
    header += ("target", "")
    lines = [header]
    for row in table:
        mark = {True: "PASS", False: "MISS", None: ""}[row.ok]
        line: tuple[str, ...] = (
            row.metric,
            row.unit,
            _fmt(row.direct),
            _fmt(row.fluidity),
            _fmt_ratio(row.ratio),
        )
        for peer in peers:
            line += (_fmt(row.peers.get(peer)), _fmt_ratio(row.peer_ratio(peer)))
        lines.append((*line, row.target, mark))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligns = ["<", "<"] + [">"] * (3 + 2 * len(peers)) + ["<", "<"]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(line, aligns, widths, strict=True)))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_cpu(phases: dict[str, Any], profiled: bool) -> str:
    lines = [
        f"CPU use during the proxied runs, % of one core ({os.cpu_count()} cores), and what "
        "other processes on the machine used meanwhile (background):"
    ]
    disturbed = []
    for key in ("bulk-http", "bulk-tls", "get", "ttfb", "tunnels"):
        for mode in phases.get(key) or {}:  # direct, fluidity and each peer
            background = _get(phases, key, mode, "background_cpu_percent")
            if background is not None and background > 25:
                disturbed.append(f"{key} {mode} ({background:.0f}%)")
        cpu = _get(phases, key, "fluidity", "cpu_percent_of_one_core")
        if cpu:
            seconds = _get(phases, key, "fluidity", "watched_seconds")
            background = _get(phases, key, "fluidity", "background_cpu_percent")
            parts = ", ".join(f"{name} {value:.0f}%" for name, value in cpu.items())
            lines.append(f"  {key:<10} {parts}, background {background:.0f}%  ({seconds} s)")
    if len(lines) == 1:
        return ""  # none of these phases ran
    if disturbed:
        note = " (py-spy counts as background here)" if profiled else ""
        lines.append(
            "WARNING: other processes were busy during "
            + ", ".join(disturbed)
            + note
            + ": those figures are lower than this machine can do; run again when it is quiet."
        )
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


async def phase_wan(bench: Bench) -> dict[str, Any]:
    from . import wan  # wan.py builds on this module's helpers: imported when used

    return await wan.phase_wan(bench)


PHASES: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
    "idle": phase_idle,
    "bulk-http": lambda bench: phase_bulk(bench, tls=False),
    "bulk-tls": lambda bench: phase_bulk(bench, tls=True),
    "get": phase_get,
    "ttfb": phase_ttfb,
    "tunnels": phase_tunnels,
    "wan": phase_wan,
}
#: What a plain `nox -s bench` runs: the WAN phase takes 11-12 minutes, so it is asked for.
DEFAULT_PHASES = [name for name in PHASES if name != "wan"]


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def log_level_args(args: argparse.Namespace) -> list[str]:
    """The agent's and the server's options from the bench's."""
    extra = ["--log-level", args.log_level] if args.log_level else []
    return [*extra, "--access-log"] if args.access_log else extra


async def run_bench(
    args: argparse.Namespace, workdir: Path, pki: Pki
) -> tuple[dict[str, Any], tuple[str, ...], list[str]]:
    """The phases' results, the peers that ran beside fluidity, and why any was left out."""
    ca = trustme.CA()
    cert = ca.issue_cert(ORIGIN_NAME, "127.0.0.1", "localhost")
    origin_pem = workdir / "origin.pem"
    origin_ca = workdir / "origin-ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(origin_pem))
    ca.cert_pem.write_to_path(str(origin_ca))
    extra = log_level_args(args)
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    phases: dict[str, Any] = {}
    # Room for every tunnel of the tunnels phase at once, as the peers have (the default
    # 512 answers 503 past it when a slow spell lets the tunnels pile up).
    agent_room = ["--max-client-connections", str(max(512, args.tunnels + 64))]
    async with (
        run_fluidity(
            "tests.bench.origin",
            ["--cert", str(origin_pem)],
            workdir,
            env={"PYTHONPATH": str(REPO)},
            name="origin",
        ) as origin,
        run_fluidity(
            "fluidity.server", server_args(pki, *extra), workdir, env=SERVER_TEST_ENV
        ) as server,
        run_fluidity(
            "fluidity.agent", agent_args(pki, server.port, *extra, *agent_room), workdir
        ) as agent,
        run_peers(args.peers, workdir) as (peers, notes),
        run_fluidity("tests.bench.floor", [], workdir, env={"PYTHONPATH": str(REPO)}) as floor,
    ):
        for note in notes:
            print(f"[bench] {note}", flush=True)
        bench = Bench(
            args, workdir, origin_ca, origin, server, agent, profile_dir, pki, peers, floor
        )
        await wait_tunnel_up(bench)
        await warm_up(bench)
        for name in args.phases:
            if args.wait_quiet:
                background = await wait_quiet(bench)
                if background >= 15:
                    print(f"[bench] the machine is busy ({background:.0f}% of a core)", flush=True)
            print(f"[bench] {name} ...", flush=True)
            started = time.perf_counter()
            try:
                phases[name] = await PHASES[name](bench)
            except Exception as exc:  # a broken phase must not lose the rest
                phases[name] = {"error": describe(exc)}
                print(f"[bench] {name} failed: {describe(exc)}", flush=True)
                if any(p.process.poll() is not None for p in (origin, server, agent)):
                    break
            print(f"[bench] {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    return phases, tuple(peers), notes


_UNITS = {"": 1, "KIB": 1024, "MIB": MIB, "GIB": GIB, "KB": 1000, "MB": MB, "GB": 1000 * MB}
#: The WAN phase's figures (tests/bench/wan.py), in the order they run.
WAN_FIGURES = ("download-http", "download-tls", "parallel", "get", "page", "stalled")


def parse_size(text: str) -> int:
    """A byte count: 1048576, 20MiB, 1GiB, 4MB."""
    number = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(number) :].upper()
    if unit not in _UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 65536, 64KiB, 20MiB, 1GiB)")
    return int(number) * _UNITS[unit]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nox -s bench --",
        description="Benchmark fluidity against a direct connection to a local origin.",
    )
    parser.add_argument("--output", default=".bench/results.json", help="JSON results file")
    parser.add_argument(
        "--workdir", help="certificates and process logs (default: next to the output, in work/)"
    )
    parser.add_argument(
        "--phases",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all but wan)",
    )
    parser.add_argument("--size", type=parse_size, default=GIB, help="bulk download size")
    parser.add_argument(
        "--repeat", type=int, default=1, help="bulk runs of each kind; the best is reported"
    )
    parser.add_argument("--bulk-timeout", type=float, default=120, help="curl --max-time")
    parser.add_argument("--get-size", type=int, default=1024, help="GET body size in bytes")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--duration", type=float, default=5.0, help="GET load seconds")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=2_000_000,
        help="GET load request cap (python load generator)",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="GET load generator (auto: wrk if installed)",
    )
    parser.add_argument("--ttfb-count", type=int, default=200, help="sequential tunnels timed")
    parser.add_argument(
        "--ttfb-warmup", type=int, default=100, help="untimed tunnels before the timed ones"
    )
    parser.add_argument("--tunnels", type=int, default=1000, help="concurrent tunnels")
    parser.add_argument("--tunnel-bytes", type=int, default=64 * 1024, help="echoed per tunnel")
    parser.add_argument("--idle-streams", type=int, default=500, help="idle tunnels held open")
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=60.0,
        help="upper bound of each tunnel phase, seconds",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="before each phase, wait up to this long for other processes to go quiet (0: no)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="for the agent and the server (default: theirs)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="turn on the agent's and the server's access logs (to compare with them off)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="py-spy the agent and server (default DIR: next to the output, in profiles/)",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--peers",
        default="all",
        help="same-shape peers run beside fluidity: none, pproxy, squid or all (%(default)s; "
        "a peer not installed is left out with a note)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 64 MiB, 1 s of GETs, 100 tunnels (WAN: 16 MiB, once, 5 GETs)",
    )
    wan = parser.add_argument_group("the WAN phase (--phases wan; sizes take KiB, MiB, GiB, MB)")
    wan.add_argument(
        "--wan-rtt",
        default="50,100",
        help="round trips to emulate, ms, comma-separated (%(default)s)",
    )
    wan.add_argument(
        "--wan-rate-mbit",
        type=float,
        default=400,
        help="the path's bottleneck, each way (%(default)s)",
    )
    wan.add_argument(
        "--wan-queue",
        type=parse_size,
        help="bottleneck queue, each way (default: rate x RTT)",
    )
    wan.add_argument(
        "--wan-figures",
        default=",".join(WAN_FIGURES),
        help=f"comma-separated subset of {','.join(WAN_FIGURES)}",
    )
    wan.add_argument(
        "--wan-size", type=parse_size, default=100 * MIB, help="download size (%(default)s)"
    )
    wan.add_argument(
        "--wan-repeats",
        type=int,
        default=3,
        help="single downloads of each kind; the median (%(default)s)",
    )
    wan.add_argument("--wan-parallel", type=int, default=4, help="downloads at once (%(default)s)")
    wan.add_argument(
        "--wan-gets", type=int, default=20, help="1 KiB GETs, fresh connections (%(default)s)"
    )
    wan.add_argument("--wan-page", type=int, default=24, help="HTTPS fetches at once (%(default)s)")
    wan.add_argument(
        "--wan-page-size", type=parse_size, default=64 * 1024, help="each fetch (%(default)s)"
    )
    wan.add_argument(
        "--wan-stalled", type=int, default=8, help="downloads whose readers stall (%(default)s)"
    )
    wan.add_argument(
        "--wan-stall-after",
        type=parse_size,
        default=4 * MIB,
        help="read before stalling (%(default)s)",
    )
    wan.add_argument(
        "--wan-stall-seconds",
        type=float,
        default=5.0,
        help="RSS watched while they stall (%(default)s)",
    )
    wan.add_argument(
        "--wan-timeout",
        type=float,
        default=300.0,
        help="cap on each WAN transfer, seconds (%(default)s)",
    )
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {list(PHASES)}")
    try:
        args.peers = wanted(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    args.wan_figures = [f.strip() for f in args.wan_figures.split(",") if f.strip()]
    unknown = [f for f in args.wan_figures if f not in WAN_FIGURES]
    if unknown:
        parser.error(f"unknown WAN figures {unknown}; choose from {list(WAN_FIGURES)}")
    try:
        args.wan_rtt = [float(ms) for ms in args.wan_rtt.split(",") if ms.strip()]
    except ValueError:
        parser.error(f"--wan-rtt takes milliseconds, comma-separated, not {args.wan_rtt!r}")
    if args.quick:
        args.size, args.duration, args.tunnels = 64 * MIB, 1.0, 100
        args.ttfb_count, args.ttfb_warmup, args.idle_streams = 50, 20, 100
        args.wan_size, args.wan_repeats, args.wan_gets, args.wan_stall_seconds = 16 * MIB, 1, 5, 2
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), use --loadgen python")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("curl"):
        print("error: the bench needs curl", file=sys.stderr)
        return 2
    output = Path(args.output).resolve()
    if not output.parent.exists():
        output.parent.mkdir(parents=True)
        if output.parent.name == ".bench":
            (output.parent / ".gitignore").write_text("*\n")  # results stay out of git
    workdir = Path(args.workdir).resolve() if args.workdir else output.parent / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if args.profile == "":
        args.profile = str(output.parent / "profiles")
    raise_file_limit()
    pki = make_pki(workdir / "pki")
    started = time.time()
    phases, peers, notes = trio.run(run_bench, args, workdir, pki)
    table = rows(phases, args.size, peers)
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "python": platform.python_version(),
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "loadgen": loadgen_tool(args.loadgen),
            "profiled": bool(args.profile),
            "options": {k: v for k, v in vars(args).items()},
            "units": "MB = 10^6 bytes; KiB = 1024 bytes; latencies in ms",
            "workdir": str(workdir),
            "peers": list(peers),
            "peer_notes": notes,
        },
        "table": [
            {
                **attrs.asdict(row),
                "ratio": None if row.ratio is None else round(row.ratio, 4),
                "peer_ratios": {
                    peer: None if (r := row.peer_ratio(peer)) is None else round(r, 4)
                    for peer in peers
                },
            }
            for row in table
        ],
        "phases": phases,
    }
    output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(render_table(table, peers))
    for note in notes:
        print(note)
    if checks := peer_target_lines(table):
        print("\nTargets as ratios to the peers in this run (fluidity / peer):")
        print("\n".join(checks))
    print()
    cpu = render_cpu(phases, bool(args.profile))
    if cpu:
        print(cpu)
    if "wan" in phases:
        from .wan import render_wan

        print(render_wan(phases["wan"]))
    print(f"GET load generator: {results['meta']['loadgen']}; results in {output}")
    if args.profile:
        from .profile_summary import summarise_dir

        print(summarise_dir(Path(args.profile)))
    errors = {k: v["error"] for k, v in phases.items() if isinstance(v, dict) and "error" in v}
    for name, error in errors.items():
        print(f"phase {name} failed: {error}")
    return 1 if errors else 0
