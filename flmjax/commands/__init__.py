"""The `flmjax` sub-commands, one module each, above every other layer.

A command module imports only the standard library when it loads, so that `flmjax CMD --help`
does not pay for jax or TensorFlow; its run function imports the library it drives.  The
registry that names them is `flmjax.cli.COMMANDS`.
"""
