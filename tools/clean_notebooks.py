"""Strip what varies between runs from notebooks, keeping their outputs.

Usage: python tools/clean_notebooks.py notebooks/*.ipynb   (``--check`` only reports)
Removes execution timestamps and other per-run cell metadata, numbers code cells 1, 2, ...
in order, and keeps only the kernelspec and language_info name in the notebook metadata."""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOISY_CELL_KEYS = ("execution", "ExecuteTime", "collapsed", "scrolled")


def clean(nb: dict) -> dict:
    count = 0
    for cell in nb["cells"]:
        meta = cell.get("metadata", {})
        for key in NOISY_CELL_KEYS:
            meta.pop(key, None)
        if cell["cell_type"] == "code":
            count += 1
            cell["execution_count"] = count
            for out in cell.get("outputs", []):
                if "execution_count" in out:
                    out["execution_count"] = count
    nb["metadata"] = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


def dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    dirty = []
    for name in (a for a in argv if a != "--check"):
        path = Path(name)
        text = path.read_text()
        cleaned = dump(clean(json.loads(text)))
        if cleaned != text:
            dirty.append(name)
            if not check:
                path.write_text(cleaned)
    if check and dirty:
        print("not clean (run `make notebooks` or tools/clean_notebooks.py):", *dirty)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
