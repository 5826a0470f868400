"""Ray Serve app: an autoscaling, OpenAI-compatible completion endpoint for a model directory.

Routes: POST /v1/completions and /v1/chat/completions (JSON or SSE stream), GET /v1/models, GET /health, and two
browser pages: the playground at / and the runs page at /runs (`minigpt_ray.web`). Each replica decodes with PyTorch
or, for a directory with a GGUF file, llama.cpp (`ServeJobConfig.runtime`). Concurrent requests on a replica are
decoded together with continuous batching (`engine`: requests join and leave a running batch between decode
steps). Validation lives in `openai_api`, decoding in `generation`/`llamacpp`/`engine`; this module only wires
them to Serve and FastAPI.
"""

import asyncio
import contextlib
import dataclasses
import html
import json
import os
import time
from pathlib import Path

import ray
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve import metrics
from starlette.exceptions import HTTPException as StarletteHTTPException

from minigpt_ray.compress.artifact import load_model_dir
from minigpt_ray.config import ServeJobConfig, from_dict
from minigpt_ray.config.bases import is_base
from minigpt_ray.config.serve import GGUF_FILE, serving_runtime
from minigpt_ray.export.llamacpp import LlamaCppModel
from minigpt_ray.faults import hang_prompt
from minigpt_ray.logs import get_logger
from minigpt_ray.modeling.model import local_model_dir, max_positions
from minigpt_ray.modeling.tokenizer import load_tokenizer
from minigpt_ray.serving.chat import CHAT, COMPLETION, ReplyShape, parse_chat
from minigpt_ray.serving.describe import ReplicaCount, model_facts
from minigpt_ray.serving.engine import DecodeEngine
from minigpt_ray.serving.openai_api import STREAM_DONE, ApiError, ParsedCompletion, decode_body, parse_completion
from minigpt_ray.web.pages import has_runs, json_safe, playground_page, runs_data, runs_page

log = get_logger()


def ingress_mode() -> str:
    """How HTTP reaches replicas in this process's cluster: "haproxy" (HAProxy → an HTTP server in each replica,
    when Ray was started with RAY_SERVE_ENABLE_HA_PROXY=1) or "proxy" (Serve's proxy actor → replica actor calls).
    Defined above the deployment class: Serve pickles that class when it is decorated."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy"


def _gguf_file(model_dir: str) -> Path:
    """The directory's model.gguf, or for a PyTorch Llama directory an f16 conversion written for this replica
    (f16: the PyTorch model's logits within f16 rounding, about half its fp32 bytes)."""
    import atexit
    import shutil
    import tempfile

    from minigpt_ray.export import export_gguf

    path = Path(model_dir) / GGUF_FILE
    if path.is_file():
        return path
    log.info("%s has no %s: converting it to f16 GGUF for llama.cpp", model_dir, GGUF_FILE)
    scratch = tempfile.mkdtemp(prefix="minigpt_gguf_")
    atexit.register(shutil.rmtree, scratch, True)
    return export_gguf(model_dir, Path(scratch) / "model", "f16")


api = FastAPI(title="minigpt_ray", description="OpenAI-compatible completions for a minigpt_ray model")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors (unknown route 404, wrong method 405) in OpenAI's error shape, like every other error."""
    return JSONResponse(ApiError(exc.status_code, f"request: {exc.detail}").body(), status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(ApiError(400, f"request: {exc.errors()[:1]}").body(), status_code=400)


@serve.deployment(name="CompletionServer")
@serve.ingress(api)
class CompletionServer:
    def __init__(self, cfg: ServeJobConfig):
        threads = max(1, int(cfg.scaling.cpus_per_replica))
        torch.set_num_threads(threads)
        self.runtime, gguf_path = serving_runtime(cfg), None
        cfg = dataclasses.replace(cfg, model=local_model_dir(cfg.model))  # a named base: converted on this node
        if self.runtime == "llama.cpp":
            self.tokenizer, gguf_path = load_tokenizer(cfg.model), _gguf_file(cfg.model)
            self.model = LlamaCppModel(gguf_path, cfg.batching.max_batch_size, threads)
            self.device, self.context_window = "cpu", self.model.context
        else:
            self.model, self.tokenizer = load_model_dir(cfg.model)
            self.device = "cuda" if cfg.scaling.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"
            self.model.to(self.device)
            self.context_window = max_positions(self.model.config) or None
        self.name, self.timeout, self.limits = cfg.model_name, cfg.limits.request_timeout_s, cfg.limits
        self.facts = model_facts(cfg.model, self.runtime, gguf_path) | {
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None))
        }
        self.replicas, self.runs_dir = ReplicaCount(), cfg.runs_dir
        self.hang_prompt = hang_prompt()  # None in every normal run (MINIGPT_RAY_FAULT, read once)
        self.api_key, self.max_queued = cfg.api_key, cfg.batching.max_queued_requests
        b = cfg.batching
        self.engine = DecodeEngine(
            self.model, self.tokenizer, b.max_batch_size, b.batch_wait_timeout_s, b.continuous, on_step=self._count_step
        )
        self.requests = metrics.Counter("minigpt_requests", "Completion requests by HTTP status", tag_keys=("status",))
        self.tokens = metrics.Counter("minigpt_generated_tokens", "Tokens generated")
        self.errors = metrics.Counter("minigpt_request_errors", "Requests answered with an error", tag_keys=("status",))
        self.ttft = metrics.Histogram(
            "minigpt_time_to_first_token_s",
            "Seconds from request to first token",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
        )
        self.batch_sizes = metrics.Histogram(
            "minigpt_batch_size", "Requests decoded together, per decode step", boundaries=[1, 2, 4, 8, 16, 32]
        )

    def _count_step(self, rows: int, tokens: int) -> None:
        self.batch_sizes.observe(rows)
        if tokens:
            self.tokens.inc(tokens)

    @api.get("/health")
    async def health(self):
        import resource

        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        broken = self.engine.broken
        status = {
            "status": "ok" if broken is None else "unhealthy",
            "model": self.name,
            "runtime": self.runtime,
            "device": str(self.device),
            "peak_rss_mb": round(peak_rss_mb, 1),
            **self.facts,
            # serve.status() is a blocking call to the controller: off the event loop that streams the replies
            "replicas": await asyncio.to_thread(self.replicas.get),
            "ingress": ingress_mode(),
            "node_id": ray.get_runtime_context().get_node_id(),  # which node's replica answered
        }
        if broken is not None:  # the last decode step failed as a whole: load balancers should look elsewhere
            return JSONResponse(status | {"error": f"decode step failed: {type(broken).__name__}"}, status_code=503)
        return status

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        """401 unless the request carries the configured key (constant-time comparison); None when allowed."""
        import hmac

        if not self.api_key:
            return None
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            return None
        return self._error(ApiError(401, "authorization: missing or wrong API key", None, "invalid_api_key"))

    @api.get("/", response_class=HTMLResponse)
    async def playground(self, request: Request):
        """The playground page (open: it holds no data; it asks for the API key when the API wants one)."""
        return HTMLResponse(playground_page(request.scope.get("root_path", "")))

    @api.get("/runs", response_class=HTMLResponse)
    async def runs(self, request: Request):
        """The runs page, its data inlined (without a key configured) or fetched from /runs/data.json with it."""
        base = request.scope.get("root_path", "")
        if not self.runs_dir or not has_runs(self.runs_dir):
            missing = f"{self.runs_dir} has no results yet" if self.runs_dir else "no run directory configured"
            note = f"<!doctype html><p>{html.escape(missing)} (serve with --runs-dir DIR).</p>"
            return HTMLResponse(note, status_code=404)
        data = (
            {"needs_key": True, "base": base}
            if self.api_key
            else await asyncio.to_thread(runs_data, self.runs_dir, base)
        )
        return HTMLResponse(runs_page(data))

    @api.get("/runs/data.json")
    async def runs_json(self, request: Request):
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if not self.runs_dir:
            return self._error(ApiError(404, "runs: no run directory configured (--runs-dir)", None, "not_found"))
        data = await asyncio.to_thread(runs_data, self.runs_dir, request.scope.get("root_path", ""))
        return json_safe(data)

    @api.get("/v1/models")
    async def models(self, request: Request):
        if (refused := self._unauthorized(request)) is not None:
            return refused
        return {
            "object": "list",
            "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "minigpt_ray"}],
        }

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._answer(request, parse_completion, COMPLETION)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._answer(request, parse_chat, CHAT)

    async def _answer(self, request: Request, parse, shape: ReplyShape):
        """One completion or chat request: parse, queue for a batch row, answer whole or streamed."""
        started = time.perf_counter()
        if (refused := self._unauthorized(request)) is not None:
            return refused
        try:
            body = decode_body(await self._read_body(request), self.limits)
            parsed = parse(body, self.tokenizer, self.limits, self.name, self.context_window)
        except ApiError as err:
            return self._error(err)
        if self.hang_prompt is not None and body.get("prompt") == self.hang_prompt:
            await asyncio.sleep(3600)  # the injected fault: a replica that stops answering
        if self.engine.backlog >= self.max_queued:
            busy = ApiError(503, f"server: {self.engine.backlog} requests already queued", None, "overloaded")
            return self._error(busy, headers={"Retry-After": "1"})
        job = self.engine.submit(parsed.request)  # no await since the backlog check: the place is taken
        cid = shape.new_id()
        if parsed.stream:
            return StreamingResponse(self._sse(parsed, job, cid, started, shape), media_type="text/event-stream")
        try:
            text, reason, count, batch = await asyncio.wait_for(self._collect(job, started), self.timeout)
        except TimeoutError:
            job.abandoned = True
            return self._error(ApiError(504, f"request: not finished within {self.timeout:g} s", None, "timeout"))
        except Exception:  # noqa: BLE001 - a failed decode answers JSON, like every other error
            job.abandoned = True
            return self._error(self._failure())
        self.requests.inc(tags={"status": "200"})
        # The most requests decoded together while this one ran: lets operators (and tests) see batching happen.
        return JSONResponse(
            shape.body(cid, self.name, text, reason, parsed.prompt_tokens, count),
            headers={
                "x-minigpt-batch-size": str(batch),
                "x-minigpt-server-ms": f"{1000 * (time.perf_counter() - started):.1f}",
            },
        )

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it passes the limit, whether or not it declared a Content-Length
        (a chunked body has none): nothing larger than the limit is ever buffered."""
        limit, size, parts = self.limits.max_body_bytes, 0, []
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise ApiError(413, f"body: more than the limit of {limit} bytes", None, "body_too_large")
            parts.append(part)
        return b"".join(parts)

    def _failure(self) -> ApiError:
        """A 500 for the client (internal details stay in the replica's log, written here)."""
        log.exception("generation failed")
        return ApiError(500, "generation failed (the replica's log has the details)", None, "server_error")

    def _error(self, err: ApiError, headers: dict | None = None) -> JSONResponse:
        self.requests.inc(tags={"status": str(err.status)})
        self.errors.inc(tags={"status": str(err.status)})
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    async def _chunks(self, job, started: float):
        first = True
        # aclosing: leaving early (timeout, client gone) frees the request's batch row right away
        async with contextlib.aclosing(self.engine.chunks(job)) as chunks:
            async for chunk in chunks:
                if first:
                    self.ttft.observe(time.perf_counter() - started)
                    first = False
                yield chunk

    async def _collect(self, job, started: float) -> tuple[str, str, int, int]:
        pieces, reason, count, batch = [], "length", 0, 1
        async with contextlib.aclosing(self._chunks(job, started)) as chunks:
            async for chunk in chunks:
                pieces.append(chunk.text)
                reason, count = chunk.finish_reason or reason, chunk.completion_tokens
                batch = max(batch, chunk.batch_size)
        return "".join(pieces), reason, count, batch

    async def _sse(self, parsed: ParsedCompletion, job, cid: str, started: float, shape: ReplyShape):
        deadline, status, count = started + self.timeout, "200", 0
        if shape.opening_event:
            yield shape.opening_event(cid, self.name)
        async with contextlib.aclosing(self._chunks(job, started)) as chunks:
            while True:
                try:  # the deadline holds while a request still queues for a batch row, too
                    chunk = await asyncio.wait_for(anext(chunks), max(0.0, deadline - time.perf_counter()))
                except StopAsyncIteration:
                    break
                except Exception as err:  # noqa: BLE001 - a failed stream ends with an error event, then [DONE]
                    timeout = isinstance(err, TimeoutError)
                    error = (
                        ApiError(504, f"request: not finished within {self.timeout:g} s", None, "timeout")
                        if timeout
                        else self._failure()
                    )
                    status = str(error.status)
                    self.errors.inc(tags={"status": status})
                    yield f"data: {json.dumps(error.body())}\n\n"
                    break
                count = chunk.completion_tokens
                if chunk.text or chunk.finish_reason:
                    yield shape.text_event(cid, self.name, chunk.text, chunk.finish_reason)
        self.requests.inc(tags={"status": status})
        if parsed.include_usage and status == "200":
            yield shape.usage_event(cid, self.name, parsed.prompt_tokens, count)
        yield STREAM_DONE


def build_app(cfg: ServeJobConfig):
    """The Serve application for a validated config (the model path made absolute: replicas may run elsewhere)."""
    s = cfg.scaling
    runs_dir = cfg.resolved_runs_dir()
    cfg = dataclasses.replace(
        cfg,
        model=cfg.model if is_base(cfg.model) else str(Path(cfg.model).resolve()),
        api_key=cfg.resolved_api_key(),
        runs_dir=str(Path(runs_dir).resolve()) if runs_dir else "",
    )
    deployment = CompletionServer.options(
        autoscaling_config={
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "initial_replicas": max(1, s.min_replicas),
            "target_ongoing_requests": s.target_ongoing_requests,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
            "look_back_period_s": s.metrics_window_s,
        },
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
    )
    return deployment.bind(cfg)


def app_builder(args: dict):
    """Entry point for `serve run minigpt_ray.serving.app:app_builder model=...` and Serve config files (args = the
    ServeJobConfig settings, nested sections as mappings)."""
    return build_app(from_dict(dict(args), ServeJobConfig).validate())


def cluster_ingress_mode() -> str:
    """ingress_mode() as the cluster's processes see it (a `ray start` environment, not this driver's)."""
    return ray.get(ray.remote(num_cpus=0)(ingress_mode).remote())


def deploy(cfg: ServeJobConfig) -> str:
    """Start Serve's HTTP ingress (HAProxy or Serve's proxy, as the cluster was started) on cfg.host:cfg.port (if
    Serve is not already up) and (re)deploy the app. Returns the base URL once the app is running."""
    from minigpt_ray.cluster import connect_ray

    backstop = cfg.limits.resolved_ingress_timeout_s()
    # An embedded Ray's Serve controller inherits this environment and configures HAProxy from it.
    os.environ.setdefault("RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S", str(backstop))
    connect_ray(cfg.ray_address)
    if (
        cfg.host in ("127.0.0.1", "localhost")
        and len([n for n in ray.nodes() if n["Alive"]]) > 1
        and cluster_ingress_mode() == "haproxy"
    ):
        log.warning(
            "warning: HAProxy ingress binds replicas to `host` too; replicas on other nodes are unreachable "
            "at 127.0.0.1 — serve with --host 0.0.0.0 inside a private network"
        )
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": backstop})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def serve_until_interrupted() -> None:
    """Block until Ctrl-C or SIGTERM, then shut Serve down (for an embedded Ray, whose apps die with the process).
    Ray leaves SIGINT at its default (die at once), so both signals are caught here."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    log.info("shutting down")
    serve.shutdown()
