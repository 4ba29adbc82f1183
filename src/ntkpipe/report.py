"""`results/report.html`: one self-contained page to read the results — the scorecard as a
table with its tally, then each study's figures at full width with their captions under them.

Snakemake's own report (`snakemake --report report.html`) adds runtimes and the job graph; this
page is for reading the science: nothing behind an icon, nothing scaled down, no server.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path
from typing import Any

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.v { font-weight: 600; white-space: nowrap; }
.true { color: #176a2c; } .false { color: #b3261e; } .inconclusive { color: #8a6100; }
.untested { color: #777; } .measured { color: #1f4e99; }
figure { margin: 2em 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 14px; color: #333; margin-top: .5em; }
.note { color: #555; font-size: 12px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def caption_html(text: str) -> str:
    """A caption's reStructuredText as HTML (docutils where installed, else paragraphs)."""
    try:
        from docutils.core import publish_parts

        return publish_parts(text, writer="html", settings_overrides={
            "report_level": 5, "halt_level": 5, "embed_stylesheet": False})["fragment"]
    except ImportError:
        return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _scorecard_table(rows: list[dict[str, str]]) -> str:
    tally = Counter(r["holds"] for r in rows)
    head = ", ".join(f"{n} {v}" for v, n in sorted(tally.items()))
    cells = []
    for r in rows:
        interval = (f" [{r['low']}, {r['high']}]" if r.get("low") and r.get("high") else "")
        p = f"; p = {r['p_value']}" if r.get("p_value") else ""
        cells.append(
            f"<tr><td class='v {html.escape(r['holds'])}'>{html.escape(r['holds'])}</td>"
            f"<td>{html.escape(r['study'])}</td><td>{html.escape(r['claim'])}"
            f"<div class='note'>{html.escape(r.get('note', ''))}</div></td>"
            f"<td>{html.escape(r['statistic'])}</td>"
            f"<td>{html.escape(r['value'])}{html.escape(interval)}{html.escape(p)}</td>"
            f"<td>{html.escape(r['threshold'])}</td><td>{html.escape(r.get('n', ''))}</td></tr>")
    return (f"<p>{len(rows)} claims: {html.escape(head)}</p><table><tr><th>verdict</th>"
            "<th>study</th><th>claim (note)</th><th>statistic</th><th>value [95 % interval]"
            "</th><th>threshold</th><th>n</th></tr>" + "".join(cells) + "</table>")


def build(scorecard_csv: str | Path, figures: list[tuple[str, str, str | Path, str]],
          out: str | Path, *, title: str, provenance: dict[str, str]) -> None:
    """Write the page: `figures` as (study title, figure name, png path, caption rst)."""
    from ntkpipe import scorecard, store

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2 id='scorecard'>Scorecard</h2>",
             _scorecard_table(scorecard.read(scorecard_csv))]
    current = None
    for study, name, path, caption in figures:
        if study != current:
            parts.append(f"<h2>{html.escape(study)}</h2>")
            current = study
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{data}'><figcaption><b>{html.escape(name)}"
                     f"</b>{caption_html(caption)}</figcaption></figure>")
    meta = ", ".join(f"{k} {html.escape(str(provenance[k]))}" for k in
                     ("ntkpipe_version", "git_commit", "torch_version") if k in provenance)
    parts.append(f"<p class='note'>Made by {meta}.</p></body></html>")
    with store.atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")


def figure_entries(studies: list[Any], figures: dict[str, list[str]], out_dir: str | Path
                   ) -> list[tuple[str, str, Path, str]]:
    """(study title, name, png, caption text) of every drawn figure, in the studies' order."""
    entries = []
    for study in studies:
        for name in figures.get(study.name, []):
            caption = Path(study.caption_path(study.figure(name))).read_text(encoding="utf-8")
            entries.append((study.title, name, Path(out_dir) / f"{name}.png", caption))
    return entries
