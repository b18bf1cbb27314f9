"""``b2l schema``: the data model as JSON Schema files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``b2l schema export``."""
    schema = subparsers.add_parser("schema", help="JSON Schemas of the data model")
    commands = schema.add_subparsers(dest="schema_command", metavar="COMMAND", required=True)
    export = commands.add_parser(
        "export",
        help="write one <Model>.schema.json per public model into DIR",
        description="Write the JSON Schema of every public record of the data model.",
    )
    export.add_argument("directory", type=Path, metavar="DIR")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from twin.schemas import json_schemas

    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = directory / f"{name}.schema.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        print(path)
    return 0
