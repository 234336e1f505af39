"""`flmjax` sub-commands, one module each (registered in `flmjax.cli.COMMANDS`)."""
