"""The agent: a local HTTP proxy that carries every connection over one link to the server."""
