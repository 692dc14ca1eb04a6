"""Click commands that live in their own modules; ``stemcli.cli`` registers them with ``cli.add_command``.

Each module imports only click and the standard library at the top, so ``stemcli --help`` stays fast.
"""
