"""An MCP client written with the official MCP Python SDK (`mcp` on PyPI).

Loom's tests run it against `loom mcp serve` (stdio) and the streamable HTTP
service. It takes one JSON argument:

    {"transport": "stdio", "command": "...", "args": [...], "env": {...},
     "mode": "auto" | "legacy", "calls": [{"name": "...", "arguments": {...}}]}
    {"transport": "http", "url": "...", "headers": {...}, "mode": ..., "calls": [...]}

and prints one JSON object: the tools listed (name, annotations, input
schema) and each call's outcome (isError, text, structuredContent, or the
protocol error's message). Assertions are the Rust test's job.
"""

import asyncio
import json
import sys

from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["transport"] == "stdio":
        server = StdioServerParameters(
            command=spec["command"], args=spec.get("args", []), env=spec.get("env")
        )
    else:
        http = create_mcp_http_client(headers=spec.get("headers", {}))
        server = streamable_http_client(spec["url"], http_client=http)
    out = {"tools": [], "calls": []}
    async with Client(server, mode=spec.get("mode", "auto"), read_timeout_seconds=60) as client:
        listed = await client.list_tools()
        for tool in listed.tools:
            annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else None
            out["tools"].append(
                {"name": tool.name, "annotations": annotations, "inputSchema": tool.input_schema}
            )
        for call in spec.get("calls", []):
            try:
                result = await client.call_tool(call["name"], call.get("arguments", {}))
            except MCPError as error:
                out["calls"].append({"protocol_error": str(error)})
                continue
            out["calls"].append(
                {
                    "isError": bool(result.is_error),
                    "text": "".join(c.text for c in result.content if c.type == "text"),
                    "structured": result.structured_content,
                }
            )
    print(json.dumps(out))


asyncio.run(main())
