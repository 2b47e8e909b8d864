"""Write the README's configuration table from the typed settings classes (one source of truth).

`python scripts/settings_table.py` rewrites the block between the settings-table markers in README.md;
`--check` fails when the README is out of date (a unit test runs it).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the services are namespace packages found from the repo root

from pydantic_settings import BaseSettings  # noqa: E402

from tagalong.runtime.settings import ClientSettings, ServiceSettings, env_name  # noqa: E402

README = ROOT / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
MODULES = ["services.embedder.settings", "services.labelstore.settings", "services.clusterer.settings",
           "gateway.settings"]


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    found: list[tuple[str, type[BaseSettings]]] = [("all services", ServiceSettings), ("clients", ClientSettings)]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseSettings) and cls.__module__ == module_name:
                found.append((module_name.split(".")[-2], cls))
    return found


def render() -> str:
    rows = ["| variable | used by | default | meaning |", "|---|---|---|---|"]
    seen: set[str] = set()
    for owner, cls in settings_classes():
        for field_name, field in cls.model_fields.items():
            inherited = owner not in ("all services", "clients") and field_name in ServiceSettings.model_fields
            if inherited and field_name != "port":
                continue  # shown once as TAGALONG_<SERVICE>_...
            name = env_name(cls, field_name)
            if name in seen:
                continue
            seen.add(name)
            if owner == "all services" and name.startswith("TAGALONG_") and field.validation_alias is None:
                # Per-service fields: shown as TAGALONG_<SERVICE>_X.
                name = name.replace("TAGALONG_", "TAGALONG_<SERVICE>_", 1)
            default = field.default
            if field.is_required():
                shown = "required"
            elif default is None:
                shown = "—"
            else:
                # Paths under the checkout are shown relative to it, so the table is the same everywhere.
                shown = f"`{str(default).replace(str(ROOT) + '/', '')}`"
            text = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{name}` | {owner} | {shown} | {text} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    if args.check:
        if new != text:
            print("README.md configuration table is stale: run `python scripts/settings_table.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print("README.md configuration table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
