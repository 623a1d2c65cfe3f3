"""The ``stem-observe`` subcommands, one module each: ``register(subparsers)`` adds the
command's parser and sets ``func`` to the function that runs it (``args -> exit status``)."""
