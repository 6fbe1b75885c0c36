"""The `pie` command-line interface; `pie_cli.main:app` is the entry point."""
