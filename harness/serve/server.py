"""`python -m harness serve`: the native engine (TorchBackend) behind the OpenAI-compatible API.

Builds the backend from the same RUN_ARGS as run_harness, binds --host/--port, and exits on
SIGINT/SIGTERM or after --idle_exit_s seconds without requests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from pathlib import Path

from aiohttp import web

from harness.backends.base import BackendError
from harness.backends.torch_backend import TorchBackend
from harness.config.loader import load_config
from harness.config.schema import HarnessConfig
from harness.config.system_detect import detect_system
from harness.run_args import parse_run_args
from harness.serve.app import BRIDGE, EngineBridge, ServeLimits, make_app

logger = logging.getLogger(__name__)


class ServeError(BackendError):
    """The server cannot start with these settings (message says the fix)."""


class StreamingTorchBackend(TorchBackend):
    """TorchBackend that also reports each decoded token (sink.on_tokens), for SSE streams."""

    def __init__(self, engine) -> None:  # noqa: ANN001 (LLMEngine)
        super().__init__(engine)
        self._num_streamed: dict[int, int] = {}  # request_id -> tokens reported so far

    def _forward(self, events) -> None:  # noqa: ANN001 (list[RequestOutput])
        super()._forward(events)
        for ev in events:
            if ev.is_finished:
                self._num_streamed.pop(ev.request_id, None)
            elif ev.is_first_token:
                self._num_streamed[ev.request_id] = 1
        for req in self.engine.scheduler.running:
            n = self._num_streamed.get(req.request_id)
            if n is not None and len(req.output_token_ids) > n:
                self.sink.on_tokens(req.request_id, req.output_token_ids[n:])
                self._num_streamed[req.request_id] = len(req.output_token_ids)


def engine_limits(engine) -> ServeLimits:  # noqa: ANN001 (LLMEngine)
    """What a request must satisfy so the engine thread never sees one it cannot run."""
    config = engine.model_runner.model.config
    sched = engine.scheduler

    def check_fits(prompt_len: int, max_tokens: int) -> str | None:
        total = prompt_len + max_tokens
        bm = sched.block_manager
        if bm.num_blocks_for(total) > bm.num_blocks:
            return (
                f"prompt {prompt_len} + max_tokens {max_tokens} needs {bm.num_blocks_for(total)} "
                f"KV blocks; the server has {bm.num_blocks}"
            )
        if sched.config.max_model_len and total > sched.config.max_model_len:
            return f"prompt + max_tokens = {total} > max_model_len {sched.config.max_model_len}"
        return None

    return ServeLimits(config.vocab_size, tuple(engine.eos_token_ids), check_fits)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, HarnessConfig]:
    p = argparse.ArgumentParser(prog="python -m harness serve", allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model_name", default="", help="served name (default: the benchmark name)")
    p.add_argument("--idle_exit_s", type=float, default=0.0, help="exit after N idle s; 0: never")
    opts, rest = p.parse_known_args(argv)
    args = parse_run_args(rest)
    if len(args.benchmarks) != 1:
        raise ServeError(f"--benchmarks={','.join(args.benchmarks)}: serve one benchmark")
    overrides = dict(args.overrides)
    backend = overrides.setdefault("engine.backend", "torch")
    if backend != "torch":
        raise ServeError(f"--backend={backend}: serve runs the native engine; use --backend=torch")
    scenario = args.scenarios[0] if args.scenarios else "Offline"
    system = args.system_name or detect_system()
    cfg = load_config(args.benchmarks[0], scenario, system, overrides, test_run=args.test_run)
    return opts, cfg


def _load_tokenizer(engine_dir: Path, model_path: Path):  # noqa: ANN202 (a HF tokenizer)
    from transformers import AutoTokenizer

    for path in (engine_dir, model_path):
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(path)
    raise ServeError(f"{engine_dir} and {model_path}: no tokenizer; run `make preprocess_data`")


async def _serve(app: web.Application, host: str, port: int, idle_exit_s: float) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise ServeError(f"cannot listen on {host}:{port} ({e}); pick another --port") from e
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info("serving on http://%s:%d (idle exit: %s s)", host, port, idle_exit_s or "never")
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
            bridge = app[BRIDGE]["bridge"]
            idle_s = time.monotonic() - bridge.last_activity
            if idle_exit_s > 0 and bridge.num_active == 0 and idle_s > idle_exit_s:
                logger.info("no requests for %.0f s: exiting (--idle_exit_s)", idle_s)
                break
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    """Serve until a signal or the idle timeout; 0 on a clean exit."""
    from harness.engine.builder import default_engine_dir

    opts, cfg = _parse(argv)
    engine_dir = default_engine_dir(cfg)
    if not (engine_dir / "engine.json").is_file():
        raise ServeError(
            f'{engine_dir}: no engine; run `make generate_engines RUN_ARGS="--benchmarks='
            f'{cfg.benchmark.name} --backend=torch --model_opt={cfg.engine.model_opt}"` first'
        )
    tokenizer = _load_tokenizer(engine_dir, Path(cfg.benchmark.model_path))
    backend = StreamingTorchBackend.from_config(cfg, engine_dir)
    model = opts.model_name or cfg.benchmark.name
    limits = engine_limits(backend.engine)

    def bridge_factory(loop: asyncio.AbstractEventLoop) -> EngineBridge:
        bridge = EngineBridge(backend, loop)
        backend.start(bridge)
        return bridge

    app = make_app(bridge_factory, tokenizer, model, limits)
    logger.info("model %r from %s (%s, %s)", model, engine_dir, cfg.engine.model_opt,
                cfg.engine.dtype)  # fmt: skip
    try:
        asyncio.run(_serve(app, opts.host, opts.port, opts.idle_exit_s))
    finally:
        if backend.sink is not None:
            try:
                backend.stop()
            except BackendError:
                logger.exception("engine worker failed")
                return 1
    return 0
