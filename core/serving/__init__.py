"""Generation and serving: text generation for any architecture, the continuous-batching engine and the
OpenAI-compatible HTTP server over it."""
