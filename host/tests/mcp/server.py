"""A real MCP server, written with the official MCP Python SDK (`MCPServer`,
formerly FastMCP), that Loom's client tests configure in
`[[tenants.T.mcp_servers]]`.

    server.py            serve over stdio
    server.py http PORT  serve streamable HTTP on 127.0.0.1:PORT at /mcp
    server.py silent     start, never answer (a server that hangs at connect)

Tools: `lookup` (annotated read-only), `add_note` (not annotated, so Loom
must treat it as destructive), and hostile ones: `huge` (answers `size`
bytes), `hang` (never answers), `die` (the process exits mid-call).
"""

import os
import sys
import time

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer("notes")
READ_ONLY = ToolAnnotations(readOnlyHint=True)


@server.tool(annotations=READ_ONLY)
def lookup(key: str) -> str:
    """Look a note up by key."""
    return f"note {key}: remember the milk"


@server.tool()
def add_note(text: str) -> str:
    """Add a note."""
    return f"added: {text}"


@server.tool(annotations=READ_ONLY)
def huge(size: int) -> str:
    """Answer with `size` bytes."""
    return "x" * size


@server.tool(annotations=READ_ONLY)
async def hang() -> str:
    """Never answer."""
    await anyio.sleep(3600)
    return "late"


@server.tool(annotations=READ_ONLY)
def die() -> str:
    """Exit the process in the middle of the call."""
    sys.stderr.write("fatal: dying on purpose\n")
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    elif mode == "silent":
        time.sleep(3600)
    else:
        server.run()
