"""``paradiff models``: the models Paradiff can use here, and each one's options (``--set``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .console import EXIT_OK


def add_parser(sub: Any) -> None:
    m = sub.add_parser("models", help="list the models Paradiff can use")
    m.add_argument("--json", action="store_true")


def cmd_models(args: argparse.Namespace) -> int:
    from ..engine.models.catalogue import list_models, model_dirs
    from ..engine.models.info import describe_model

    entries = list_models()
    # A model's options (--set KEY=VALUE) come from the same table the app draws its controls from.
    infos = {e.id: describe_model(e.id) for e in entries}  # configs only: nothing loads
    options = {e.id: [{"key": c[0], "label": c[1], "min": c[2], "max": c[3], "default": c[4]}
                      for c in infos[e.id].controls] if e.kind == "builtin" else [] for e in entries}
    if args.json:
        print(json.dumps([{**e.__dict__, "label": infos[e.id].label, "options": options[e.id]} for e in entries],
                         indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "kind", "what", "where", "options (--set KEY=VALUE)", title="Models Paradiff can use")
    for e in entries:
        opts = ", ".join(f"{o['key']}={o['min']}..{o['max']} (default {o['default']})" for o in options[e.id])
        table.add_row(e.id, e.kind, infos[e.id].label, e.where, opts)
    console = Console()
    console.print(table)
    if not entries:
        console.print("No models found.")
    console.print("Searched: " + ", ".join(str(d) for d in model_dirs()) + ", and the Hugging Face hub cache.")
    return EXIT_OK
