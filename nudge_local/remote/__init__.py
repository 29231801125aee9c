"""A model on a serving engine (docs/remote.md): the same interface as a local GGUF Model, answered
by HTTP requests to llama.cpp's llama-server (native API: token ids, top-N probabilities) or to any
OpenAI-compatible /v1/completions endpoint (vLLM, SGLang, llama-cpp-python's server: text only).

A server reports only the top-k probabilities of each position, so a logits row from it is a
`TopRow`: the listed tokens carry their true log-probabilities and the rest of the mass is spread
evenly over the unlisted ids. The plain softmax of such a row gives every listed token its reported
probability (so the top-1 probability nudging gates on is exact), and greedy choice is the server's
argmax. Sampling with temperature draws among the listed tokens only (`Chooser`).

Requests are few: asked for the row after a prefix, a model asks its server for a greedy chunk of
tokens after it with their top-k probabilities, and keeps the rows of the whole chunk (`Chunk`, chunks.py).
While the answer follows the server's own greedy tokens (the base writing in token mode, the nudger
writing a word), the next rows are already there; a prefix that leaves the chunk asks again, and the
server's prefix cache re-reads only the new suffix.

Served models implement the engine's model interface (nudge_local/engine/interface.py):
llama_server.py (token ids) and completions.py (text only); connect.py tells which a server needs.
The other modules are their parts: http.py (requests and errors), rows.py (top-k rows), chunks.py
(reading ahead). This face defines only the API names, so reading settings loads no HTTP client.
"""

APIS = ("auto", "llama-server", "openai", "ollama")
