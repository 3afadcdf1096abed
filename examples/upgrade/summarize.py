"""Summarise the example's `compatkit check --json` verdicts as one Markdown table.

Usage: python summarize.py CHECKS_DIR  (one NAME.json per candidate v2)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GROUPS = (("all", "all"), ("old", "old classes"), ("unseen", "new classes"))


def cell(t: dict | None) -> str:
    if t is None:
        return "-"
    mark = "**yes**" if t["strict"] else "no"
    return f"{t['old_old']:.1f} / {t['new_old']:.1f} / {t['new_new']:.1f} {mark}"


def main() -> None:
    rows = []
    for path in sorted(Path(sys.argv[1]).glob("*.json")):
        v = json.loads(path.read_text())
        name = path.stem
        if not v["contract"]["ok"]:
            rows.append(f"| {name} | refused: {v['contract']['reason']} |||||||")
            continue
        g = v["groups"]
        cells = [
            cell(g[k]["metrics"][m] if g.get(k) else None)
            for m in ("recall@1", "template")
            for k, _ in GROUPS
        ]
        cos = g["all"]["feature_cosine"]
        verdict = "compatible (exit 0)" if v["compatible"] else "not compatible (exit 1)"
        rows.append(f"| {name} | {' | '.join(cells)} | {cos:.3f} | {verdict} |")
    head = [f"recall@1 {t}" for _, t in GROUPS] + [f"template {t}" for _, t in GROUPS]
    print("Each cell: old/old / new/old / new/new (%), then whether new/old > old/old (strict).")
    print("'new classes' = classes v1 never saw. Decision: recall@1 over all queries.\n")
    print(f"| v2 | {' | '.join(head)} | cos(v1, v2) | gate |")
    print("|" + "---|" * (len(head) + 3))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
