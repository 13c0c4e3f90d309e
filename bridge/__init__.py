"""bridge: a drop-in replacement for `ollama serve` on llama.cpp."""

__version__ = "0.1.0"

# What /api/version reports. Clients (Open WebUI, Continue, the ollama CLI) enforce minimum
# versions, so this tracks the Ollama release whose wire behaviour bridge matches.
OLLAMA_COMPAT_VERSION = "0.13.0"
