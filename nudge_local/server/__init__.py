"""`nudge-local serve`: the OpenAI HTTP API over one loaded pair (docs/server.md). A consumer of the
engine like the CLI and the chat; nothing in the engine imports it."""
