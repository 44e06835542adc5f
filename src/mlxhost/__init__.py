"""mlxhost: an OpenAI-compatible HTTP server for local LLMs and VLMs on MLX."""

__version__ = "0.1.0"
