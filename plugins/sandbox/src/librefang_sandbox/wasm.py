"""The WASM sandbox: wasmtime with fuel metering, epoch interruption and a memory cap.

One engine per kernel (fuel and epochs switched on); every call gets a fresh ``Store`` and instance,
so nothing survives between calls. A timer thread advances the engine's epoch every
``epoch_tick_ms`` while a call is running, and each store's deadline is the call's time budget in
ticks: an infinite loop traps with ``INTERRUPT`` within the deadline, a long computation with
``OUT_OF_FUEL`` when its instruction budget is spent. Calls run in a worker thread.

Guest ABI (what a module exports and imports):

- exports ``memory``, ``alloc(len: i32) -> i32`` and an entry point ``(ptr: i32, len: i32) -> i64``:
  the host writes the input into memory obtained from ``alloc`` and calls the entry point, which
  returns ``(out_ptr << 32) | out_len`` of its UTF-8 result. A WASM *tool* exports ``execute`` and
  receives its input as JSON; a ``wasm:`` *agent* exports ``handle`` and receives the user's message
  as plain UTF-8 text, and its result is the reply (see ``wasm_agents.py``);
- may import ``librefang.host_call(ptr: i32, len: i32) -> i64``: the request is JSON
  ``{"method": ..., "params": {...}}``; the answer (``{"ok": ...}`` or ``{"error": ...}``) is written
  into guest memory through ``alloc`` and returned packed the same way. Nothing else is importable
  (no WASI): the module reaches the world only through checked host calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import math
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from librefang_sandbox.config import WasmSandboxConfig

if TYPE_CHECKING:  # pragma: no cover
    import wasmtime

# wasmtime (4-5 MiB and a native library) is imported when the first module is compiled or run,
# not at daemon start-up; a missing wasmtime still fails this module's import, as it did.
if importlib.util.find_spec("wasmtime") is None:  # pragma: no cover - wasmtime is a declared dependency
    raise ImportError("librefang-sandbox needs the 'wasmtime' package (pip install wasmtime)")

log = logging.getLogger("librefang.sandbox.wasm")
MAX_CACHED_MODULES = 64


def host_call_type() -> wasmtime.FuncType:
    import wasmtime

    # Built per use: wasmtime-py hands the type's native handle over, so a shared one dies after a call.
    return wasmtime.FuncType([wasmtime.ValType.i32(), wasmtime.ValType.i32()], [wasmtime.ValType.i64()])


class WasmError(Exception):
    """A WASM run failed; the message says why (fuel, deadline, memory, trap, bad module)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class EpochTicker:
    """Advances the engine's epoch on a timer while at least one call runs."""

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self.engine = engine
        self.tick = tick
        self.active = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = False
        self.thread: threading.Thread | None = None

    def __enter__(self) -> EpochTicker:
        with self.lock:
            self.active += 1
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="librefang-wasm-epoch", daemon=True)
                self.thread.start()
        self.wake.set()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.active -= 1

    def _run(self) -> None:
        while not self.stopped:
            if self.active <= 0:
                self.wake.clear()
                self.wake.wait(1.0)
                continue
            time.sleep(self.tick)
            self.engine.increment_epoch()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(2)


def pack(ptr: int, length: int) -> int:
    """``(ptr << 32) | length`` as the signed i64 wasm expects."""
    value = ((ptr & 0xFFFFFFFF) << 32) | (length & 0xFFFFFFFF)
    return value - (1 << 64) if value >= 1 << 63 else value


def unpack(value: int) -> tuple[int, int]:
    value &= (1 << 64) - 1
    return value >> 32, value & 0xFFFFFFFF


class WasmSandbox:
    """Compiles and runs modules under ``[wasm_sandbox]``."""

    def __init__(self, config: WasmSandboxConfig) -> None:
        self.config = config
        self._engine: wasmtime.Engine | None = None  # built on first use (see engine)
        self._ticker: EpochTicker | None = None
        self._engine_lock = threading.Lock()
        self.modules: OrderedDict[tuple[str, bool], wasmtime.Module] = OrderedDict()
        self.modules_lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent, thread_name_prefix="librefang-wasm")
        self.slots = asyncio.Semaphore(config.max_concurrent)

    @property
    def engine(self) -> wasmtime.Engine:
        """The sandbox's engine (fuel and epochs on), made on first use: start-up needs no wasmtime."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    import wasmtime

                    engine_config = wasmtime.Config()
                    engine_config.consume_fuel = True
                    engine_config.epoch_interruption = True
                    engine = wasmtime.Engine(engine_config)
                    self._ticker = EpochTicker(engine, self.config.epoch_tick_ms / 1000)
                    self._engine = engine
        return self._engine

    @property
    def ticker(self) -> EpochTicker:
        """The epoch timer of :attr:`engine` (made with it)."""
        self.engine  # noqa: B018 - makes the engine and its ticker
        assert self._ticker is not None
        return self._ticker

    def load(self, path: Path) -> wasmtime.Module:
        """Compile ``path`` (``.wat`` text or binary ``.wasm``). Compiled once per content: the cache
        is keyed by the SHA-256 of the bytes, so an edited file is recompiled and two paths holding the
        same module share one compilation. Blocks."""
        try:
            size = path.stat().st_size
        except OSError:
            raise WasmError(f"no WASM module at {path.name}", "bad_module") from None
        if size > self.config.max_module_bytes:
            raise WasmError(f"module is {size} bytes; the limit is {self.config.max_module_bytes}", "bad_module")
        try:
            with path.open("rb") as handle:
                data = handle.read(self.config.max_module_bytes + 1)
        except OSError:
            raise WasmError(f"no WASM module at {path.name}", "bad_module") from None
        if len(data) > self.config.max_module_bytes:  # grew since the stat
            raise WasmError(f"module is over the limit of {self.config.max_module_bytes} bytes", "bad_module")
        key = (hashlib.sha256(data).hexdigest(), path.suffix == ".wat")
        with self.modules_lock:
            if key in self.modules:
                self.modules.move_to_end(key)
                self.counts["cache_hits"] += 1
                return self.modules[key]
        import wasmtime

        try:
            module = wasmtime.Module(self.engine, data.decode("utf-8") if path.suffix == ".wat" else data)
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
            raise WasmError(f"invalid WASM module {path.name}: {str(exc).splitlines()[0][:300]}", "bad_module") from None
        with self.modules_lock:
            self.counts["compiled"] += 1
            self.modules[key] = module
            while len(self.modules) > MAX_CACHED_MODULES:
                self.modules.popitem(last=False)
        return module

    def run_sync(self, module: wasmtime.Module, payload: bytes,
                 host: Callable[[bytes], bytes] | None = None, entry: str = "execute") -> str:
        """Run ``entry`` (``execute`` for tools, ``handle`` for agents) of a fresh instance of
        ``module`` on ``payload``; returns the result text. ``host(request) -> response`` serves
        ``host_call``. Blocks: call from a worker thread."""
        import wasmtime

        cfg = self.config
        if len(payload) > cfg.max_input_bytes:
            raise WasmError(f"input is {len(payload)} bytes; the limit is {cfg.max_input_bytes}", "input_too_large")
        store = wasmtime.Store(self.engine)
        store.set_fuel(cfg.fuel)
        ticks = max(1, math.ceil(cfg.timeout_secs * 1000 / cfg.epoch_tick_ms))
        store.set_epoch_deadline(ticks)
        store.set_limits(memory_size=cfg.memory_bytes, instances=1, tables=4, memories=1,
                         table_elements=100_000)
        linker = wasmtime.Linker(self.engine)
        linker.define_func("librefang", "host_call", host_call_type(), self._host_function(host),
                           access_caller=True)
        self.counts["runs"] += 1
        with self.ticker:
            try:
                instance = linker.instantiate(store, module)
                exports = instance.exports(store)
                memory, alloc, execute = (exports.get(n) for n in ("memory", "alloc", entry))
                if not isinstance(memory, wasmtime.Memory) or not isinstance(alloc, wasmtime.Func) \
                        or not isinstance(execute, wasmtime.Func):
                    raise WasmError(f"the module must export memory, alloc and {entry}", "bad_module")
                ptr = alloc(store, len(payload)) if payload else 0
                self._check_range(store, memory, ptr, len(payload))
                memory.write(store, payload, ptr)
                out_ptr, out_len = unpack(execute(store, ptr, len(payload)))
            except wasmtime.Trap as trap:
                raise self._trap_error(trap) from None
            except wasmtime.WasmtimeError as exc:
                self.counts["failed"] += 1
                raise WasmError(f"the module could not run: {str(exc).splitlines()[0][:300]}",
                                "instantiation") from None
            except WasmError:
                self.counts["failed"] += 1
                raise
        if out_len > cfg.max_output_bytes:
            raise WasmError(f"the result is {out_len} bytes; the limit is {cfg.max_output_bytes}", "output_too_large")
        self._check_range(store, memory, out_ptr, out_len)
        return bytes(memory.read(store, out_ptr, out_ptr + out_len)).decode("utf-8", errors="replace")

    @staticmethod
    def _check_range(store: wasmtime.Store, memory: wasmtime.Memory, ptr: int, length: int) -> None:
        if ptr < 0 or ptr + length > memory.data_len(store):
            raise WasmError("the module returned a buffer outside its memory", "bad_module")

    def _trap_error(self, trap: wasmtime.Trap) -> WasmError:
        import wasmtime

        code = trap.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            self.counts["fuel_exhausted"] += 1
            return WasmError(f"fuel exhausted: the call used its {self.config.fuel} fuel units", "fuel")
        if code == wasmtime.TrapCode.INTERRUPT:
            self.counts["deadline_exceeded"] += 1
            return WasmError(f"deadline exceeded: still running after {self.config.timeout_secs:g} seconds",
                             "deadline")
        self.counts["trapped"] += 1
        name = code.name.lower() if code is not None else str(trap).splitlines()[0][:200]
        return WasmError(f"the module trapped: {name}", "trap")

    def _host_function(self, host: Callable[[bytes], bytes] | None) -> Callable[..., int]:
        import wasmtime

        max_request = self.config.max_input_bytes

        def host_call(caller: wasmtime.Caller, ptr: int, length: int) -> int:
            memory, alloc = caller.get("memory"), caller.get("alloc")
            if not isinstance(memory, wasmtime.Memory) or not isinstance(alloc, wasmtime.Func):
                raise WasmError("host_call needs the module to export memory and alloc", "bad_module")
            if length > max_request or ptr < 0 or ptr + length > memory.data_len(caller):
                response = b'{"error":"invalid host_call request buffer"}'
            elif host is None:
                response = b'{"error":"no host calls are available here"}'
            else:
                response = host(bytes(memory.read(caller, ptr, ptr + length)))
            out = alloc(caller, len(response))
            if out < 0 or out + len(response) > memory.data_len(caller):
                raise WasmError("alloc returned a buffer outside memory", "bad_module")
            memory.write(caller, response, out)
            return pack(out, len(response))

        return host_call

    async def run(self, path: Path, payload: bytes, host: Callable[[bytes], bytes] | None = None,
                  entry: str = "execute") -> str:
        """Compile (cached) and run ``path`` in one of the sandbox's own worker threads. Runs beyond
        ``max_concurrent`` wait their turn, so long guests never starve the default thread pool the
        rest of the daemon uses."""
        loop = asyncio.get_running_loop()
        async with self.slots:
            module = await loop.run_in_executor(self.executor, self.load, path)
            return await loop.run_in_executor(self.executor, self.run_sync, module, payload, host, entry)

    def close(self) -> None:
        """Stop the epoch timer and the worker threads."""
        if self._ticker is not None:
            self._ticker.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """Live limits and counters for ``/api/security``."""
        c = self.config
        return {
            "engine": f"wasmtime {getattr(sys.modules.get('wasmtime'), '__version__', '')}".strip(),
            "fuel_per_call": c.fuel,
            "epoch_deadline_secs": c.timeout_secs,
            "epoch_tick_ms": c.epoch_tick_ms,
            "memory_limit_bytes": c.memory_bytes,
            "max_input_bytes": c.max_input_bytes,
            "max_output_bytes": c.max_output_bytes,
            "max_host_calls": c.max_host_calls,
            "max_concurrent": c.max_concurrent,
            "fresh_store_per_call": True,
            "wasi": False,
            "runs": self.counts["runs"],
            "fuel_exhausted": self.counts["fuel_exhausted"],
            "deadline_exceeded": self.counts["deadline_exceeded"],
            "trapped": self.counts["trapped"],
            "modules_compiled": self.counts["compiled"],
            "module_cache_hits": self.counts["cache_hits"],
            "module_cache": "by SHA-256 of the module bytes",
        }
