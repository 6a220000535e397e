"""A Loom tool component written in Python.

componentize-py (CPython compiled to WebAssembly, pre-initialised with
Wizer) turns this module into a component of the `tool-plugin` world of
`wit/plugin@0.1.3`::

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/componentize-py -d ../../wit/plugin@0.1.3 -w tool-plugin \
        componentize app -o py-tool.wasm

WIT maps to Python the way componentize-py generates it (the `wit_world`
package): imports are modules (`wit_world.imports.context`), the exported
`tool` interface is a class named `Tool` in this module, records are
dataclasses with snake_case fields, `option<T>` is `T | None`, and a
`result<T, E>` export returns `T` or raises `componentize_py_types.Err(E)`.

Two tools:

* `py_run_context` answers who the call serves, as the host told it
  through the `context` import (never from the arguments);
* `py_read_file` reads a text file with `open()` (wasi:filesystem
  underneath). It works only inside a directory the tenant grants and this
  plugin's manifest (`py-tool.toml`) requests; anywhere else the file does
  not exist for the guest and the tool answers `denied`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context, types

# Most characters `py_read_file` returns.
MAX_CHARS = 4096


def object_schema(properties, required=()):
    """The JSON Schema of an object with `properties`."""
    return json.dumps(
        {
            "type": "object",
            "properties": properties,
            "required": list(required),
            "additionalProperties": False,
        }
    )


def parse_arguments(text):
    """The arguments as a dict; an empty string counts as `{}`."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise Err(types.ToolError_InvalidArguments(f"arguments are not JSON: {error}"))
    if not isinstance(value, dict):
        raise Err(types.ToolError_InvalidArguments("arguments must be a JSON object"))
    return value


def run_context():
    """`py_run_context`: the run context, as a dict."""
    ctx = context.current()
    context.log(context.LogLevel.INFO, "py_run_context called")
    return {
        "language": "python",
        "tenant": ctx.tenant,
        "user_id": ctx.user_id,
        "session_id": ctx.session_id,
        "run_id": ctx.run_id,
        "metadata": dict(ctx.metadata),
        "idempotency_key": context.idempotency_key(),
    }


def read_file(args):
    """`py_read_file`: the start of a text file; a refused path is `denied`."""
    path = args.get("path")
    if not isinstance(path, str):
        raise Err(types.ToolError_InvalidArguments("`path` must be a string"))
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(MAX_CHARS)
    except OSError as error:
        # Outside the granted directories nothing exists for the guest.
        raise Err(types.ToolError_Denied(f"cannot read {path}: {error.strerror or error}"))
    return {"path": path, "content": text}


class Tool(exports.Tool):
    """The exported `loom:plugin/tool@0.1.3` interface."""

    def list(self):
        """The tools this component offers; the same for every caller."""
        return [
            types.ToolSpec(
                name="py_run_context",
                description="Return the tenant, user, session and run this call serves (Python)",
                parameters=object_schema({}),
                destructive=False,
                idempotent=True,
            ),
            types.ToolSpec(
                name="py_read_file",
                description="Read the start of a text file",
                parameters=object_schema(
                    {"path": {"type": "string", "description": "Absolute path"}}, ["path"]
                ),
                destructive=False,
                idempotent=True,
            ),
        ]

    def invoke(self, name, arguments):
        """Run tool `name` on JSON `arguments`; returns JSON."""
        args = parse_arguments(arguments)
        if name == "py_run_context":
            return json.dumps(run_context())
        if name == "py_read_file":
            return json.dumps(read_file(args))
        raise Err(types.ToolError_UnknownTool(name))
