"""Index function_app.py the way the Python worker does, and invoke one function with its bindings."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions._abc import RetryContext, TraceContext

from tools.devhost.settings import StartupError, resolve_tokens

log = logging.getLogger("devhost")

TRIGGERS = ("queueTrigger", "httpTrigger", "timerTrigger")


@dataclass(frozen=True)
class QueueOutput:
    """A `queue` output binding: `name` is the argument (or "$return") whose value is enqueued."""

    name: str
    queue_name: str
    connection: str


@dataclass(frozen=True)
class FunctionSpec:
    """One indexed function: its trigger binding (tokens resolved) and how to call it."""

    name: str
    trigger: dict[str, Any]
    user_function: Callable[..., Any]
    outputs: tuple[QueueOutput, ...] = ()
    wants_context: bool = False
    directory: str = ""

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def trigger_arg(self) -> str:
        return str(self.trigger["name"])

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation."""

    ok: bool
    value: Any = None
    error: BaseException | None = None
    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))


# Sends rendered messages for one queue output binding; supplied by the host (it owns the clients).
OutputSender = Callable[[QueueOutput, list[str]], Awaitable[None]]


class _Out(func.Out[Any]):
    """The value holder passed for a func.Out[...] parameter."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _Context(func.Context):
    """The parts of the worker's invocation context that make sense outside Azure."""

    def __init__(self, invocation_id: str, spec: FunctionSpec) -> None:
        self._invocation_id = invocation_id
        self._spec = spec

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return threading.local

    @property
    def function_name(self) -> str:
        return self._spec.name

    @property
    def function_directory(self) -> str:
        return self._spec.directory

    @property
    def trace_context(self) -> TraceContext:
        raise NotImplementedError("trace_context is not available under the devhost")

    @property
    def retry_context(self) -> RetryContext:
        raise NotImplementedError("retry_context is not available under the devhost")


def _resolve(value: Any, settings: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return resolve_tokens(value, settings, where=where)
    if isinstance(value, list):
        return [_resolve(item, settings, where) for item in value]
    if isinstance(value, dict):
        return {key: _resolve(item, settings, where) for key, item in value.items()}
    return value


def import_app(app_dir: Path) -> tuple[ModuleType, func.FunctionRegister]:
    """Import app_dir/function_app.py and return it with its single FunctionApp, as the worker does."""
    if not (app_dir / "function_app.py").exists():
        raise StartupError(f"{app_dir} has no function_app.py")
    sys.path.insert(0, str(app_dir))
    module = importlib.import_module("function_app")
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if len(apps) != 1:
        raise StartupError(f"function_app.py must define exactly one FunctionApp, found {len(apps)}")
    return module, apps[0]


def index_app(app_dir: Path, settings: Mapping[str, str]) -> list[FunctionSpec]:
    """Build a FunctionSpec per function; unsupported bindings are startup errors, not surprises."""
    module, app = import_app(app_dir)
    specs: list[FunctionSpec] = []
    # get_functions() caches names on the app and raises if called twice: call it exactly once.
    for function in app.get_functions():
        name = function.get_function_name() or function.get_user_function().__name__
        bindings = json.loads(function.get_function_json())["bindings"]
        bindings = _resolve(bindings, settings, f"function '{name}'")
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1 or triggers[0]["type"] not in TRIGGERS:
            kinds = [b.get("type") for b in triggers]
            raise StartupError(f"function '{name}': trigger {kinds} is not supported by the devhost")
        outputs: list[QueueOutput] = []
        for binding in bindings:
            kind, direction = binding.get("type"), str(binding.get("direction", "")).upper()
            if binding is triggers[0] or (kind == "http" and direction == "OUT"):
                continue
            if kind == "queue" and direction == "OUT":
                outputs.append(
                    QueueOutput(
                        binding["name"], binding["queueName"], binding.get("connection") or "AzureWebJobsStorage"
                    )
                )
                continue
            raise StartupError(
                f"function '{name}': {direction.lower()} binding '{kind}' ({binding.get('name')}) "
                "is not supported by the devhost; use the SDK in the function instead"
            )
        user_function = function.get_user_function()
        parameters = inspect.signature(user_function).parameters
        names = {b["name"] for b in bindings}
        specs.append(
            FunctionSpec(
                name=name,
                trigger=triggers[0],
                user_function=user_function,
                outputs=tuple(outputs),
                # The worker passes a Context to a parameter literally named `context`.
                wants_context="context" in parameters and "context" not in names,
                directory=str(Path(module.__file__ or app_dir).parent),
            )
        )
    return specs


def render_output(value: Any) -> list[str]:
    """Turn a value set on a queue output into message texts, like the worker's converter."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [text for item in value for text in render_output(item)]
    if isinstance(value, func.QueueMessage):
        return [value.get_body().decode("utf-8")]
    if isinstance(value, bytes | bytearray):
        return [bytes(value).decode("utf-8")]
    if isinstance(value, str):
        return [value]
    return [json.dumps(value)]


async def invoke(spec: FunctionSpec, trigger_value: Any, *, send: OutputSender, detail: str = "") -> Invocation:
    """Call the user function (async on this loop, sync in a thread), then write its outputs."""
    invocation_id = str(uuid.uuid4())
    outs = {o.name: _Out() for o in spec.outputs if o.name != "$return"}
    kwargs: dict[str, Any] = {spec.trigger_arg: trigger_value, **outs}
    if spec.wants_context:
        kwargs["context"] = _Context(invocation_id, spec)
    started = time.monotonic()
    try:
        if spec.is_async:
            result = await spec.user_function(**kwargs)
        else:
            result = await asyncio.to_thread(spec.user_function, **kwargs)
        # The host writes output bindings only after the function returned; a failed write fails it.
        for output in spec.outputs:
            value = result if output.name == "$return" else outs[output.name].get()
            messages = render_output(value)
            if messages:
                await send(output, messages)
    except Exception as exc:  # any user exception is a failed invocation, as in the host
        elapsed = (time.monotonic() - started) * 1000
        log.error(
            "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)%s",
            spec.name,
            invocation_id,
            elapsed,
            detail,
            exc_info=exc,
        )
        return Invocation(ok=False, error=exc, invocation_id=invocation_id)
    elapsed = (time.monotonic() - started) * 1000
    log.info(
        "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)%s",
        spec.name,
        invocation_id,
        elapsed,
        detail,
    )
    return Invocation(ok=True, value=result, invocation_id=invocation_id)
