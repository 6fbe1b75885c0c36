"""`pie build`: check a Python inferlet's manifest and sources and pack it for upload.

The work is done by `pie.sandbox.package.build`; this module is the command line around it.
Registered by `pie_cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("build")
    def build(
        path: Annotated[Path, typer.Argument(help="Inferlet directory (with Pie.toml) or .py file.")] = Path("."),
        output: Annotated[Path | None, typer.Option(
            "--output", "-o", help="Directory for the artifact (default: <path>/dist).")] = None,
    ) -> None:
        """Pack a Python inferlet into <name>-<version>.zip plus its manifest."""
        from pie.sandbox.package import PackageError
        from pie.sandbox.package import build as pack
        from pie_cli.errors import UserError

        try:
            pkg = pack(path, output)
        except PackageError as e:
            raise UserError(str(e)) from None
        typer.echo(f"built {pkg.name}@{pkg.version}: {pkg.artifact} ({len(pkg.modules)} module(s))")
        typer.echo(f"run it with: pie run --path {pkg.artifact} --manifest {pkg.manifest}")
