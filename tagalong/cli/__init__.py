"""The `tagalong` command: a typer + rich front end to the Gateway (through the SDK)."""
