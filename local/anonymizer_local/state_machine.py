"""Walk the video state machine's own definition (functions/video_workflow/statemachine.asl.json)
on this machine: the same states, in the same order, with the same payloads, each Lambda call
made in-process; the Distributed Map runs its items side by side on a thread pool.

It understands what that definition uses and nothing more: Task (``lambda:invoke``), Map
(``ItemsPath``, ``ItemSelector``, ``ItemProcessor``, ``ToleratedFailurePercentage`` 0), Succeed,
Fail; ``Parameters``/``ItemSelector`` with ``.$`` paths (``$...`` and ``$$.Map.Item.Value``),
``ResultSelector``, ``ResultPath`` (including null), ``OutputPath`` and ``Catch``. Retries are
not replayed (an in-process call has no transient Lambda service errors).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFINITION = Path(__file__).resolve().parents[2] / "functions" / "video_workflow" / "statemachine.asl.json"

Invoke = Callable[[dict[str, Any]], Any]  # a Lambda payload -> its result


class StateMachineFailed(Exception):
    """The execution ended in a Fail state (or an uncaught error)."""

    def __init__(self, error: str, cause: str, output: Any = None):
        super().__init__(f"{error}: {cause}")
        self.error, self.cause, self.output = error, cause, output


class _TaskError(Exception):
    def __init__(self, error: str, cause: str):
        super().__init__(error)
        self.error, self.cause = error, cause


def load_definition(path: Path = DEFINITION) -> dict[str, Any]:
    return json.loads(path.read_text())


def _path(data: Any, path: str, context: dict[str, Any]) -> Any:
    if path.startswith("$$"):
        data, path = context, path[1:]
    if path == "$":
        return data
    for part in path[2:].split("."):
        data = data[part]
    return data


def _fill(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """Parameters / ItemSelector / ResultSelector: keys ending in ``.$`` take a path's value."""
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = _path(data, value, context)
            else:
                out[key] = _fill(value, data, context)
        return out
    return copy.deepcopy(template)


def _put(data: Any, result_path: str | None, result: Any) -> Any:
    if result_path is None:
        return data
    if result_path == "$":
        return result
    out = copy.deepcopy(data)
    node = out
    parts = result_path[2:].split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = result
    return out


def run(
    definition: dict[str, Any],
    data: Any,
    invoke: Invoke,
    *,
    workers: int = 2,
    context: dict[str, Any] | None = None,
    trace: Callable[[str], None] | None = None,
) -> Any:
    """Execute ``definition`` on ``data``; returns the final output or raises StateMachineFailed."""
    states, name = definition["States"], definition["StartAt"]
    context = context or {}
    while True:
        state = states[name]
        if trace is not None:
            trace(name)
        kind = state["Type"]
        if kind == "Succeed":
            return data
        if kind == "Fail":
            raise StateMachineFailed(state.get("Error", "States.Failed"), state.get("Cause", ""), data)
        try:
            if kind == "Task":
                payload = _fill(state.get("Parameters", {}), data, context)["Payload"]
                result: Any = {"Payload": _call(invoke, payload)}
            elif kind == "Map":
                result = _map(state, data, invoke, workers, trace)
            else:
                raise ValueError(f"state type {kind} is not used by the video workflow")
            if "ResultSelector" in state:
                result = _fill(state["ResultSelector"], result, context)
            data = _put(data, state.get("ResultPath", "$"), result)
            if "OutputPath" in state:
                data = _path(data, state["OutputPath"], context)
        except _TaskError as exc:
            catch = next((c for c in state.get("Catch", []) if {"States.ALL", exc.error} & set(c["ErrorEquals"])), None)
            if catch is None:
                raise StateMachineFailed(exc.error, exc.cause, data) from exc
            data = _put(data, catch.get("ResultPath", "$"), {"Error": exc.error, "Cause": exc.cause})
            name = catch["Next"]
            continue
        if state.get("End"):
            return data
        name = state["Next"]


def _call(invoke: Invoke, payload: Any) -> Any:
    """A Lambda call: an exception becomes the error Step Functions sees (type + JSON cause)."""
    try:
        return json.loads(json.dumps(invoke(payload), default=str))  # what the wire would carry
    except Exception as exc:  # noqa: BLE001 - every Lambda error is data for Catch
        cause = json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)})
        raise _TaskError(type(exc).__name__, cause) from exc


def _map(state: dict[str, Any], data: Any, invoke: Invoke, workers: int, trace) -> list[Any]:
    """Items side by side; with ToleratedFailurePercentage 0 the first failure stops the items
    not started yet (as Step Functions stops launching child executions) and fails the Map."""
    items = _path(data, state["ItemsPath"], {})
    processor = state["ItemProcessor"]
    failures: list[StateMachineFailed] = []

    def one(index: int) -> Any:
        if failures:
            return None  # not started: the Map has failed already
        context = {"Map": {"Item": {"Index": index, "Value": items[index]}}}
        item = _fill(state["ItemSelector"], data, context) if "ItemSelector" in state else items[index]
        try:
            return run(processor, item, invoke, workers=1, context=context, trace=trace)
        except StateMachineFailed as exc:
            failures.append(exc)
            raise

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, i) for i in range(len(items))]
        results = [future.result() for future in futures if future.exception() is None]
    if failures:
        first = failures[0]
        raise _TaskError("States.ExceedToleratedFailureThreshold", f"{first.error}: {first.cause}")
    return results
