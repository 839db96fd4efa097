"""The WAN phase (`--phases wan`): Fluidity across an emulated long path, against plain TCP
across the same kind of path.

A stream's flow-control window caps it at window / RTT, which loopback never shows. For each
round trip in --wan-rtt this starts a delay line (`tests.bench.delayline`, its own process)
with three listeners, each with its own bottleneck of --wan-rate-mbit each way and its own
queue: one in front of the server, which a second agent's link crosses (its server port is the
line's; it checks the server's certificate by name, so the port does not matter), and one in
front of each of the origin's HTTP and HTTPS ports, which the direct runs cross. The figures,
direct beside fluidity:

* download-http, download-tls  one --wan-size download (curl; CONNECT+TLS for tls), the median
                               of --wan-repeats
* parallel  --wan-parallel plain HTTP downloads at once: their aggregate, against the line
* get       a 1 KiB GET on a fresh connection (the link already up), --wan-gets in a row
* page      --wan-page HTTPS fetches of --wan-page-size at once (one curl, CONNECT+TLS through
            the agent): the wall time
* stalled   --wan-stalled downloads whose readers stop after --wan-stall-after bytes: the peak
            RSS of the agent and the server over --wan-stall-seconds, that is what the windows
            let pile up (fluidity only)

The direct runs are what a TCP connection gets across the path: the delay line does not delay
TCP's own acknowledgements (see its docstring), so they run near the line rate. Every transfer
is capped by --wan-timeout; the direct and the fluidity runs alternate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

import fluidity.tunnel
from tests.support.processes import Running, agent_args, run_fluidity

from .run import (
    GIB,
    MB,
    ORIGIN_NAME,
    REPO,
    WAN_FIGURES,
    Bench,
    Row,
    _clean_env,
    _get,
    connect_loopback,
    curl_command,
    curl_download,
    describe,
    fetch_json,
    log_level_args,
    ms_percentiles,
    rss_kib,
    settle,
    size_label,
    wait_quiet,
    wait_tunnel_up,
    warm_up,
    watch,
)

MODES = ("direct", "fluidity")


@attrs.frozen
class WanPath:
    """One emulated path: the delay line, and the bench with an agent whose link crosses it."""

    rtt_ms: float
    bench: Bench
    line: Running
    #: The line's listeners in front of the origin's HTTP and HTTPS ports.
    http_port: int
    https_port: int

    @property
    def args(self) -> argparse.Namespace:
        return self.bench.args

    @property
    def everyone(self) -> dict[str, int]:
        return {**self.bench.pids, "delayline": self.bench.pid(self.line)}

    def watched(self, mode: str) -> dict[str, int]:
        """The processes a run of `mode` keeps busy."""
        names = ("origin", "delayline") if mode == "direct" else ("agent", "server", "delayline")
        return {name: self.everyone[name] for name in names}

    def url(self, mode: str, path: str, *, tls: bool = False) -> tuple[str, int]:
        """The URL for `mode` (direct: the line's port, resolved to loopback) and its port."""
        if mode == "direct":
            port = self.https_port if tls else self.http_port
        else:
            port = self.bench.https_port if tls else self.bench.http_port
        return f"{'https' if tls else 'http'}://{ORIGIN_NAME}:{port}{path}", port


def receive_budget() -> int:
    """The link-wide receive budget the processes run with (the default of both)."""
    return fluidity.tunnel.LinkConfig().policy.receive_budget


@asynccontextmanager
async def wan_path(bench: Bench, rtt_ms: float) -> AsyncIterator[WanPath]:
    """A delay line of `rtt_ms` and an agent linked to the server across it, link up."""
    args = bench.args
    targets = [bench.server.port, bench.http_port, bench.https_port]
    line_args = ["--rtt-ms", str(rtt_ms), "--rate-mbit", str(args.wan_rate_mbit)]
    if args.wan_queue:
        line_args += ["--queue-bytes", str(args.wan_queue)]
    for port in targets:
        line_args += ["--forward", str(port)]
    name = f"{rtt_ms:g}ms"
    async with run_fluidity(
        "tests.bench.delayline",
        line_args,
        bench.workdir,
        env={"PYTHONPATH": str(REPO)},
        name=f"delayline-{name}",
    ) as line:
        link_port, http_port, https_port = (line.info["forwards"][str(p)] for p in targets)
        async with run_fluidity(
            "fluidity.agent",
            agent_args(bench.pki, link_port, *log_level_args(args)),
            bench.workdir,
            name=f"agent-{name}",
        ) as agent:
            wan_args = argparse.Namespace(**{**vars(args), "bulk_timeout": args.wan_timeout})
            across = attrs.evolve(bench, agent=agent, args=wan_args)
            await wait_tunnel_up(across)
            await warm_up(across)
            yield WanPath(rtt_ms, across, line, http_port, https_port)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by MB/s (the lower middle one of an even count; failed runs rank first)."""
    ranked = sorted(runs, key=lambda r: (r["ok"], r["MBps"]))
    return ranked[(len(ranked) - 1) // 2]


# -- the figures ----------------------------------------------------------------------------------


async def download(path: WanPath, *, tls: bool) -> dict[str, Any]:
    size = path.args.wan_size
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(path.args.wan_repeats):
        for mode in MODES:
            url, port = path.url(mode, f"/stream?n={size}", tls=tls)
            async with watch(path.watched(mode), path.everyone) as w:
                result = await curl_download(
                    path.bench,
                    url,
                    proxy=path.bench.proxy if mode == "fluidity" else None,
                    port=port,
                    size=size,
                )
            runs[mode].append({**result, **w.summary()})
            await settle(path.bench)
    out: dict[str, Any] = {mode: median_run(results) for mode, results in runs.items()}
    out["runs_MBps"] = {mode: [r["MBps"] for r in results] for mode, results in runs.items()}
    return out


async def downloads_at_once(path: WanPath, mode: str) -> dict[str, Any]:
    """--wan-parallel downloads started together: their total over the time the last took."""
    n, size = path.args.wan_parallel, path.args.wan_size
    url, port = path.url(mode, f"/stream?n={size}")
    results: list[dict[str, Any]] = []

    async def one() -> None:
        proxy = path.bench.proxy if mode == "fluidity" else None
        results.append(await curl_download(path.bench, url, proxy=proxy, port=port, size=size))

    async with watch(path.watched(mode), path.everyone) as w:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
        seconds = time.perf_counter() - start
    megabytes = sum(r["bytes"] for r in results) / MB
    line = path.args.wan_rate_mbit * 1e6 / 8 / MB
    return {
        "MBps": round(megabytes / seconds, 1),
        "share_of_line": round(megabytes / seconds / line, 3),
        "seconds": round(seconds, 3),
        "downloads": n,
        "ok": all(r["ok"] for r in results),
        "each_MBps": [r["MBps"] for r in results],
        "errors": [r["error"] for r in results if "error" in r],
        **w.summary(),
    }


async def parallel(path: WanPath) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        out[mode] = await downloads_at_once(path, mode)
        await settle(path.bench)
    return out


async def fresh_get(path: WanPath) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        url, port = path.url(mode, "/stream?n=1024")
        seconds: list[float] = []
        errors: list[str] = []
        with trio.move_on_after(path.args.wan_timeout):
            for _ in range(path.args.wan_gets):
                result = await curl_download(
                    path.bench,
                    url,
                    proxy=path.bench.proxy if mode == "fluidity" else None,
                    port=port,
                    size=1024,
                )
                if result["ok"]:
                    seconds.append(result["seconds"])
                else:
                    errors.append(result["error"])
        out[mode] = {"requests": len(seconds), "errors": errors[:5], **ms_percentiles(seconds)}
        await settle(path.bench)
    return out


async def page(path: WanPath) -> dict[str, Any]:
    """Many small HTTPS fetches at once, as a web page makes them: one curl, --parallel."""
    n, size = path.args.wan_page, path.args.wan_page_size
    out: dict[str, Any] = {}
    for mode in MODES:
        url, port = path.url(mode, f"/stream?n={size}", tls=True)
        command = curl_command(
            path.bench, proxy=path.bench.proxy if mode == "fluidity" else None, port=port, tls=True
        )
        command += ["--no-progress-meter", "--parallel", "--parallel-immediate"]
        command += ["--parallel-max", str(n)]
        command += ["-w", "%{http_code} %{size_download}\\n"]
        for _ in range(n):
            command += ["-o", "/dev/null", url]
        async with watch(path.watched(mode), path.everyone) as w:
            start = time.perf_counter()
            with trio.fail_after(path.args.wan_timeout + 30):
                result = await trio.run_process(
                    command, capture_stdout=True, capture_stderr=True, check=False, env=_clean_env()
                )
            seconds = time.perf_counter() - start
        fetched = result.stdout.decode().split("\n").count(f"200 {size}")
        out[mode] = {
            "fetches": n,
            "ok": fetched,
            "seconds": round(seconds, 3),
            "errors": result.stderr.decode(errors="replace")[-500:] if fetched < n else "",
            **w.summary(),
        }
        await settle(path.bench)
    return out


async def stalled(path: WanPath) -> dict[str, Any]:
    """Downloads whose readers stop mid-way: what the agent and the server hold for them."""
    n, after, bench = path.args.wan_stalled, path.args.wan_stall_after, path.bench
    url, _ = path.url("fluidity", f"/stream?n={10 * GIB}")  # far more than a stall lets through
    request = f"GET {url} HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode()
    pids = {name: bench.pids[name] for name in ("agent", "server")}
    before = {name: round(rss_kib(pid) * 1024 / MB, 1) for name, pid in pids.items()}
    streams: list[trio.SocketStream] = []

    async def read_then_stall() -> None:
        stream = await connect_loopback(bench.agent.port)
        streams.append(stream)
        await stream.send_all(request)
        received = 0
        while received < after:
            data = await stream.receive_some(256 * 1024)
            if not data:
                raise ConnectionError(f"the download ended after {received} bytes")
            received += len(data)

    try:
        async with watch(pids, path.everyone) as w:
            with trio.fail_after(path.args.wan_timeout):
                async with trio.open_nursery() as nursery:
                    for _ in range(n):
                        nursery.start_soon(read_then_stall)
            await trio.sleep(path.args.wan_stall_seconds)  # every reader has stopped
        health = await fetch_json(bench.agent.port, "/healthz")
    finally:
        with trio.CancelScope(shield=True):
            for stream in streams:
                await trio.aclose_forcefully(stream)
    await settle(bench)
    return {
        "fluidity": {
            "readers": n,
            "stalled_after_bytes": after,
            "stalled_seconds": path.args.wan_stall_seconds,
            "agent_open_streams": health.get("open_streams"),
            "rss_before_mb": before,
            **w.summary(),
        },
    }


FIGURES: dict[str, Callable[[WanPath], Awaitable[dict[str, Any]]]] = {
    "download-http": lambda path: download(path, tls=False),
    "download-tls": lambda path: download(path, tls=True),
    "parallel": parallel,
    "get": fresh_get,
    "page": page,
    "stalled": stalled,
}
assert tuple(FIGURES) == WAN_FIGURES


async def phase_wan(bench: Bench) -> dict[str, Any]:
    args = bench.args
    out: dict[str, Any] = {
        "rate_mbit": args.wan_rate_mbit,
        "line_MBps": round(args.wan_rate_mbit * 1e6 / 8 / MB, 1),
        "size": args.wan_size,
        "receive_budget": receive_budget(),
        "paths": {},
    }
    failures: list[str] = []
    for rtt_ms in args.wan_rtt:
        result: dict[str, Any] = {"rtt_ms": rtt_ms}
        out["paths"][f"{rtt_ms:g}"] = result
        async with wan_path(bench, rtt_ms) as path:
            result["queue_bytes"] = path.line.info["queue_bytes"]
            for name in args.wan_figures:
                if args.wait_quiet:
                    await wait_quiet(path.bench)
                print(f"[bench] wan {rtt_ms:g} ms: {name} ...", flush=True)
                try:
                    result[name] = await FIGURES[name](path)
                except Exception as exc:  # a broken figure must not lose the rest
                    result[name] = {"error": describe(exc)}
                    failures.append(f"{rtt_ms:g} ms {name}: {describe(exc)}")
                    print(f"[bench] wan {rtt_ms:g} ms: {name} failed: {describe(exc)}")
                path.bench.check_alive()  # a dead process ends the phase
                if path.line.process.poll() is not None:
                    raise RuntimeError(f"the delay line exited:\n{path.line.log()[-4000:]}")
    if failures:
        out["error"] = "; ".join(failures)
    return out


# -- results ----------------------------------------------------------------------------------


_AGENT_PEAK = ("peak_rss_mb", "agent")
_SERVER_PEAK = ("peak_rss_mb", "server")


def wan_rows(wan: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    size = size_label(wan["size"])
    for rtt, result in wan.get("paths", {}).items():
        n_parallel = _get(result, "parallel", "fluidity", "downloads")
        n_page = _get(result, "page", "fluidity", "fetches")
        readers = _get(result, "stalled", "fluidity", "readers")
        for figure, label, unit, key in (
            ("download-http", f"one {size} download, plain HTTP", "MB/s", ("MBps",)),
            ("download-tls", f"one {size} download, CONNECT+TLS", "MB/s", ("MBps",)),
            ("parallel", f"{n_parallel} downloads at once, total", "MB/s", ("MBps",)),
            ("get", "1 KiB GET, fresh connection, p50", "ms", ("p50_ms",)),
            ("page", f"{n_page} HTTPS fetches at once", "s", ("seconds",)),
            ("stalled", f"agent peak RSS, {readers} stalled readers", "MB", _AGENT_PEAK),
            ("stalled", f"server peak RSS, {readers} stalled readers", "MB", _SERVER_PEAK),
        ):
            direct = _get(result, figure, "direct", *key)
            fluidity = _get(result, figure, "fluidity", *key)
            out.append(Row(f"WAN {rtt} ms: {label}", unit, direct, fluidity, "", None))
    return out


def render_wan(wan: dict[str, Any]) -> str:
    budget = wan.get("receive_budget")
    lines = [
        f"WAN: a bottleneck of {wan['rate_mbit']:g} Mbit/s ({wan['line_MBps']} MB/s) each way; "
        "link receive budget: " + ("n/a" if budget is None else f"{budget:,} bytes")
    ]
    for rtt, result in wan.get("paths", {}).items():
        queue = result.get("queue_bytes", 0)
        lines.append(f"  {rtt} ms: bottleneck queue {queue:,} bytes each way")
        for figure in ("download-http", "download-tls", "parallel"):
            direct = _get(result, figure, "direct", "cpu_percent_of_one_core", "delayline")
            through = _get(result, figure, "fluidity", "cpu_percent_of_one_core") or {}
            if direct is None:
                continue
            parts = ", ".join(f"{name} {value:.0f}%" for name, value in through.items())
            lines.append(
                f"  {rtt} ms {figure:<13} CPU (% of one core): direct: delay line {direct:.0f}%;"
                f" fluidity: {parts}"
            )
        for figure in ("download-http", "download-tls"):
            runs = _get(result, figure, "runs_MBps")
            if runs:
                lines.append(f"  {rtt} ms {figure:<13} runs, MB/s: {runs}")
        stalled = _get(result, "stalled", "fluidity") or {}
        if "peak_rss_mb" in stalled:
            parts = ", ".join(
                f"{name} {stalled['rss_before_mb'][name]} -> {peak} MB"
                for name, peak in stalled["peak_rss_mb"].items()
            )
            lines.append(f"  {rtt} ms stalled readers, RSS before -> peak: {parts}")
    disturbed = [
        f"{rtt} ms {figure} {mode} ({background:.0f}%)"
        for rtt, result in wan.get("paths", {}).items()
        for figure in WAN_FIGURES
        for mode in MODES
        if (background := _get(result, figure, mode, "background_cpu_percent") or 0) > 25
    ]
    if disturbed:
        lines.append(
            "WARNING: other processes were busy (% of one core) during "
            + ", ".join(disturbed)
            + ": the transfers there may be slower than this machine can do."
        )
    return "\n".join(lines)
