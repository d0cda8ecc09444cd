"""Log message templates with variable parts (ids, numbers, IPs), so Drain3 has something to mine.

Each format has its own flavour (Spring Boot controllers, GAIA Python services, OpenStack
daemons). Exception templates come from retries and timeouts at a low rate all the time; an
error burst raises their rate, it does not bring templates of its own. Startup, shutdown and
batch-job lines come from benign events (deploys, nightly jobs), never from faults.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from stages.simulate.system import System

INFO, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {"eadro": ("INFO", "WARN", "ERROR"), "gaia": ("INFO", "WARNING", "ERROR"),
               "msds": ("INFO", "WARNING", "ERROR")}
WORDS = ("shanghai", "suzhou", "nanjing", "beijing", "taiyuan", "wuxi", "hangzhou", "GZqDYHLc", "KOZoDVJh",
         "lYAOPtMm", "alpha", "bravo", "delta", "sierra")

POOLS: dict[str, dict[str, tuple[str, ...]]] = {
    "eadro": {
        "info": (
            "[{Svc} Service][{Op}] Id: {uuid}",
            "[{Svc} Service][{Op}] Result Size: {num}",
            "[{Svc} Service] Query for Station id is: Response(status=1, msg=Success, data={word})",
            "[{Svc} Service][Verify Login] Success, cost {ms} ms",
            "[{Svc} Service][Get Order Info] Last One Hour: {num}  Total Valid Order: {num2}",
            "[{Svc} Service][{Op}] Account Id: {uuid} Success",
            "Span reported: {hex}:{hex2}:{hex}:1 - {op}",
        ),
        "warn": ("[{Svc} Service] Slow downstream response: {ms} ms", "[{Svc} Service] Retry {num} for request {uuid}"),
        "error": ("[{Svc} Service] Request {hex} failed with status 500",),
        "loss": ('[{Svc} Service] I/O error on POST request for "http://{peer}:{port}/api/v1/{word}": '
                 "Connection reset; nested exception is java.net.SocketException: Connection reset",),
        "exception": (
            "Servlet.service() for servlet [dispatcherServlet] in context with path [] threw exception [Request "
            "processing failed; nested exception is java.lang.NullPointerException] with root cause {hex}",
            "java.lang.IllegalStateException: Connection pool exhausted after {ms} ms (active={num})",
            "com.mongodb.MongoSocketReadException: Prematurely reached end of stream while reading {uuid}",
            "org.springframework.dao.DataAccessResourceFailureException: Timed out after {num} ms while waiting "
            "for a server",
        ),
        "startup": (
            "Starting {App} v1.0 on {hex} with PID 1 (/app/{App}.jar started by root in /app)",
            "Tomcat initialized with port(s): {port} (http)",
            "Root WebApplicationContext: initialization completed in {ms} ms",
            "Tomcat started on port(s): {port} (http) with context path ''",
            "Started {App} in {sec} seconds (JVM running for {sec})",
        ),
        "shutdown": ("Shutting down ExecutorService 'applicationTaskExecutor'",),
        "batch": (
            "[{Svc} Service][Batch] Job {word} started",
            "[{Svc} Service][Batch] Job {word} processed {num} records in {ms} ms",
            "[{Svc} Service][Batch] Job {word} finished: {num} records",
        ),
    },
    "gaia": {
        "info": (
            "now call service:{peer}, inst:http://{ip}:{port} as a downstream service",
            "info {uuid}:{word} write success",
            "request http://{ip}:{port}/{op} and param={{'keys': '{uuid}', 'value': '{word}'}}",
            "the list of all available services are {peer}: http://{ip}:{port}",
            "query {op} finished in {ms} ms, rows={num}",
        ),
        "warn": ("request to {peer} is slow: {ms} ms",),
        "error": ("call {op} returned status 500",),
        "loss": ("an error occurred when calling {peer}: Max retries exceeded with url: /{op} (Caused by "
                 "ConnectionResetError(104, 'Connection reset by peer'))",),
        "exception": (
            "Traceback (most recent call last): KeyError: '{word}' in handler {op}",
            "redis.exceptions.ConnectionError: Error 111 connecting to {ip}:{port}. Connection refused.",
            "pymysql.err.OperationalError: (2013, 'Lost connection to MySQL server during query ({num})')",
        ),
        "startup": (
            "* Serving Flask app '{peer}' (lazy loading)",
            "* Running on http://{ip}:{port}/ (Press CTRL+C to quit)",
            "service {peer} registered itself at http://{ip}:{port}",
        ),
        "shutdown": ("received SIGTERM, shutting down {peer}",),
        "batch": (
            "batch job {word} started",
            "batch job {word} progress: {num} rows in {ms} ms",
            "batch job {word} finished in {sec} s",
        ),
    },
    "msds": {
        "info": (
            '{ip} "GET /v2.1/servers/{uuid} HTTP/1.1" status: 200 len: {num} time: {sec}',
            "[instance: {uuid}] Took {sec} seconds to spawn the instance on the hypervisor.",
            "[req-{uuid}] Successfully synced instances from host '{host}'.",
            "Compute_service record updated for {host}:{host}",
            '[req-{uuid}] Lock "compute_resources" released by "{op}" :: held {sec}s',
        ),
        "warn": ("[req-{uuid}] Unable to refresh network info cache for instance: took {sec} seconds",),
        "error": ("[req-{uuid}] Error during {op}: timed out",),
        "loss": ("[req-{uuid}] Unexpected error contacting {peer}: ConnectFailure: Unable to establish connection "
                 "to http://{ip}:{port}: Connection reset by peer; retrying",),
        "exception": (
            "[req-{uuid}] Exception during message handling: MessagingTimeout: Timed out waiting for a reply to "
            "message ID {hex}",
            "[instance: {uuid}] Instance failed to spawn: libvirtError: internal error: process exited while "
            "connecting to monitor ({num})",
            "DBConnectionError: (pymysql.err.OperationalError) (2003, \"Can't connect to MySQL server on '{ip}'\")",
        ),
        "startup": (
            "Starting {peer} node (version 20.6.1)",
            "Connected to AMQP server on {ip}:5672",
            "Creating RPC server for service {peer} on {host}",
        ),
        "shutdown": ("Caught SIGTERM, stopping children",),
        "batch": (
            "[req-{uuid}] Running periodic task ComputeManager._run_image_cache_manager_pass",
            "[req-{uuid}] Image cache manager: verified {num} base files in {sec}s",
            "[req-{uuid}] Periodic task _run_image_cache_manager_pass finished: removed {num} files",
        ),
    },
}


@dataclass(frozen=True)
class Template:
    level: int
    text: str
    fields: frozenset[str]


@dataclass(frozen=True)
class TemplateBook:
    """Every template of one system, and which of them each service uses."""

    templates: tuple[Template, ...]
    info: tuple[np.ndarray, ...]  # per service: template ids used at INFO
    warn: tuple[np.ndarray, ...]
    error: tuple[np.ndarray, ...]
    loss: int  # template id for a caller's failed-call line
    exceptions: np.ndarray  # exception template ids (retries and timeouts; more of them in error bursts)
    startup: tuple[np.ndarray, ...]  # per service: lines written, in order, when it starts
    shutdown: tuple[np.ndarray, ...]  # per service: lines written when it stops
    batch: tuple[np.ndarray, ...]  # per service: (job started, progress, job finished)


def _fields(text: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in string.Formatter().parse(text) if name)


def build_book(system: System, rng: np.random.Generator) -> TemplateBook:
    pool = POOLS[system.fmt]
    templates: list[Template] = []

    def add(level: int, text: str) -> int:
        templates.append(Template(level=level, text=text, fields=_fields(text)))
        return len(templates) - 1

    info, warn, error, startup, shutdown, batch = [], [], [], [], [], []
    for svc in system.services:
        # Each service gets its own copies (bound to its name) of a random subset of the pool.
        display = svc.name.removeprefix("ts-").removesuffix("-service").replace("-", " ").title()
        op = svc.module.rsplit(".", 1)[-1]
        app = display.replace(" ", "") + "Application"

        def bind(text: str) -> str:
            return text.replace("{Svc}", display).replace("{Op}", op).replace("{App}", app)

        picks = rng.choice(len(pool["info"]), size=min(4, len(pool["info"])), replace=False)
        info.append(np.asarray([add(INFO, bind(pool["info"][i])) for i in sorted(picks)], dtype=np.int64))
        warn.append(np.asarray([add(WARN, bind(t)) for t in pool["warn"]], dtype=np.int64))
        error.append(np.asarray([add(ERROR, bind(t)) for t in pool["error"]], dtype=np.int64))
        startup.append(np.asarray([add(INFO, bind(t)) for t in pool["startup"]], dtype=np.int64))
        shutdown.append(np.asarray([add(INFO, bind(t)) for t in pool["shutdown"]], dtype=np.int64))
        batch.append(np.asarray([add(INFO, bind(t)) for t in pool["batch"]], dtype=np.int64))
    loss = add(ERROR, pool["loss"][0].replace("{Svc}", "Client"))
    exceptions = np.asarray([add(ERROR, t) for t in pool["exception"]], dtype=np.int64)
    return TemplateBook(templates=tuple(templates), info=tuple(info), warn=tuple(warn), error=tuple(error),
                        loss=loss, exceptions=exceptions, startup=tuple(startup), shutdown=tuple(shutdown),
                        batch=tuple(batch))


def render_messages(book: TemplateBook, system: System, template: np.ndarray, service: np.ndarray,
                    peer: np.ndarray, u1: np.ndarray, u2: np.ndarray, num: np.ndarray,
                    operation: list[str]) -> list[str]:
    """Fill each row's template with its variable parts (ids from the random words u1/u2)."""
    services = system.services
    out: list[str] = []
    for t, s, p, a, b, n, op in zip(template.tolist(), service.tolist(), peer.tolist(), u1.tolist(),
                                     u2.tolist(), num.tolist(), operation):
        tpl = book.templates[t]
        values: dict[str, object] = {}
        f = tpl.fields
        if "uuid" in f:
            h = f"{a:016x}{b:016x}"
            values["uuid"] = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
        if "hex" in f:
            values["hex"] = f"{a:x}"
        if "hex2" in f:
            values["hex2"] = f"{b:x}"
        if "num" in f:
            values["num"] = n
        if "num2" in f:
            values["num2"] = n + (a % 97)
        if "ms" in f:
            values["ms"] = 3 + (b % 900)
        if "sec" in f:
            values["sec"] = f"{(b % 40000) / 1000:.2f}"
        if "word" in f:
            values["word"] = WORDS[a % len(WORDS)]
        if "op" in f:
            values["op"] = op
        if f & {"peer", "ip", "port", "host"}:
            peer_svc = services[p]
            values["peer"] = peer_svc.name.split("@")[0]
            values["ip"] = peer_svc.host_ip if system.fmt == "gaia" else peer_svc.ip
            values["port"] = peer_svc.port
            values["host"] = services[s].host
        out.append(tpl.text.format(**values))
    return out
