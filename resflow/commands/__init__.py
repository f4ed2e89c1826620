"""One module per CLI command, each exposing ``register(app)`` and importing heavy parts
lazily, and :mod:`resflow.commands.options`, the flags several commands share."""
