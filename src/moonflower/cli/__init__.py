"""The `moonflower` command line, one module per command group."""
