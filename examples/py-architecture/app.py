"""A Loom architecture (agent loop) written in Python: `py-react`.

componentize-py turns this module into a component of the
`architecture-plugin` world of `wit/plugin@0.1.3`::

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/componentize-py -d ../../wit/plugin@0.1.3 -w architecture-plugin \
        componentize app -o py-architecture.wasm

The loop: ask the model (offering the run's tools), run every tool call it
asks for in one `call_tools` (the host runs them in parallel, each in its
own sandbox with the tenant's grants), add the results to the
conversation, and repeat until the model answers without calling a tool or
the run's turn cap is reached.

An import returning `result<T, E>` returns `T` or raises
`componentize_py_types.Err` whose `value` is `E`; an export returns `T` or
raises `Err(E)`.
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.exports import architecture
from wit_world.imports import harness, types


def message(role, content):
    """A message of `role` with `content` and nothing else."""
    return types.Message(role=role, content=content, name=None, tool_call_id=None, tool_calls=[])


def observation(result):
    """What the model reads for one tool result."""
    outcome = result.outcome
    if isinstance(outcome, Ok):
        content = outcome.value
    elif isinstance(outcome.value, types.ToolError_Denied):
        content = f"DENIED: {outcome.value.value}"
    else:
        kind = type(outcome.value).__name__.removeprefix("ToolError_")
        content = f"ERROR: {kind}: {outcome.value.value}"
    return types.Message(
        role=types.Role.TOOL,
        content=content,
        name=result.name,
        tool_call_id=result.call_id,
        tool_calls=[],
    )


def harness_error(error):
    """A failed harness call as the architecture's `run-error`."""
    kind = type(error.value).__name__.removeprefix("HarnessError_")
    detail = getattr(error.value, "value", None)
    text = kind if detail is None else f"{kind}: {detail}"
    return Err(architecture.RunError_Harness(text))


class Architecture(exports.Architecture):
    """The exported `loom:plugin/architecture@0.1.3` interface."""

    def describe(self):
        """What this architecture is."""
        return architecture.ArchitectureInfo(
            name="py-react",
            description="Call tools until the model answers (an example architecture in Python)",
            workers=[],
            config_schema=json.dumps(
                {"type": "object", "properties": {}, "additionalProperties": False}
            ),
        )

    def run(self, input):
        """Run the loop for `input` to completion."""
        conversation = list(input.history)
        added = []

        def push(m):
            conversation.append(m)
            added.append(m)

        if not input.history and input.instructions:
            push(message(types.Role.SYSTEM, input.instructions))
        push(message(types.Role.USER, input.prompt))

        offered = harness.tools()
        usage = types.Usage(input_tokens=0, output_tokens=0, cached_tokens=0)
        cost = 0.0
        turns = 0
        last = ""

        def output(text, interrupted):
            return architecture.RunOutput(
                output=text,
                new_messages=added,
                turns=turns,
                usage=usage,
                cost_usd=cost,
                interrupted=interrupted,
            )

        while turns < input.max_turns:
            try:
                completion = harness.complete(
                    harness.CompletionRequest(
                        messages=conversation,
                        tools=offered,
                        temperature=None,
                        max_output_tokens=None,
                        output_schema=None,
                        role=None,
                    )
                )
            except Err as error:
                raise harness_error(error)
            turns += 1
            usage.input_tokens += completion.usage.input_tokens
            usage.output_tokens += completion.usage.output_tokens
            usage.cached_tokens += completion.usage.cached_tokens
            cost += completion.cost_usd
            push(completion.message)
            last = completion.message.content
            calls = completion.message.tool_calls
            if not calls:
                harness.emit(
                    harness.Event(
                        kind="answered", data=json.dumps({"language": "python", "turns": turns})
                    )
                )
                return output(last, None)
            for result in harness.call_tools(calls):
                push(observation(result))
        return output(last, "max_turns")
