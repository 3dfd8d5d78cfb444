"""User-facing applications on top of the library: the `vlkit` command (cli), the terminal chat (repl), the
quickstart and the OpenAI-compatible server (serve/). Nothing below this layer imports it."""
