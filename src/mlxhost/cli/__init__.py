"""The command line: serve and one module per everyday command."""
