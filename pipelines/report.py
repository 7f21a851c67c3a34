"""Per-smear reports from a run's ``fields.jsonl``: ``report.json`` (schema in the README), ``report.csv`` and a
self-contained ``report.html`` (differential table with CIs, bar chart, flags, prognosis, cell gallery), plus a
run-level ``index.html``. Reading is streamed: one tally per smear, never the fields themselves."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from core.io import safe_name
from pipelines.differential import SmearTally, smear_report
from pipelines.results import read_records


def tally_run(jsonl: Path, leukocyte_labels: set[str]) -> tuple[dict[str, SmearTally], dict]:
    """Stream ``fields.jsonl`` into per-smear tallies; also returns run totals."""
    tallies: dict[str, SmearTally] = {}
    totals = {"fields_total": 0, "fields_ok": 0, "fields_failed": 0, "cells": 0}
    for rec in read_records(jsonl):
        t = tallies.setdefault(rec["smear_id"], SmearTally(rec["smear_id"]))
        t.add(rec, leukocyte_labels)
        totals["fields_total"] += 1
        totals["fields_ok" if not rec.get("error") else "fields_failed"] += 1
        totals["cells"] += len(rec.get("cells", []))
    return tallies, totals


def write_reports(out_dir: Path, cfg: dict) -> dict:
    """Write every smear's reports and ``index.html``; returns run totals with the list of smears."""
    out_dir = Path(out_dir)
    dcfg = cfg["differential"]
    tallies, totals = tally_run(out_dir / "fields.jsonl", set(dcfg["leukocyte_labels"]))
    rows = []
    for smear_id in sorted(tallies):
        rep = smear_report(tallies[smear_id], dcfg)
        d = out_dir / "smears" / safe_name(smear_id)
        d.mkdir(parents=True, exist_ok=True)
        (d / "report.json").write_text(json.dumps(rep, indent=1))
        write_csv(rep, d / "report.csv")
        (d / "report.html").write_text(render_html(rep, d / "gallery"), encoding="utf-8")
        rows.append(rep)
    (out_dir / "index.html").write_text(render_index(rows), encoding="utf-8")
    return {**totals, "smears": len(rows)}


def write_csv(rep: dict, path: Path) -> None:
    """One row per differential class, then NRBC, platelets and unidentified rows."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["smear_id", "class", "count", "percent", "ci95_low", "ci95_high"])
        for label, v in rep["differential"].items():
            w.writerow([rep["smear_id"], label, v["count"], v["percent"], v["ci95"][0], v["ci95"][1]])
        w.writerow([rep["smear_id"], "nrbc_per_100_wbc", rep["nrbc"]["count"], rep["nrbc"]["per_100_wbc"], "", ""])
        w.writerow([rep["smear_id"], "platelets", rep["platelets"], "", "", ""])
        w.writerow([rep["smear_id"], "unidentified", rep["unidentified"], "", "", ""])


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f0f7}td:first-child,th:first-child{text-align:left}.flag{color:#a11;font-weight:600}
.pos{color:#0a6d2c;font-weight:700}.neg{color:#333;font-weight:700}.ind{color:#b36b00;font-weight:700}
.gal{display:flex;flex-wrap:wrap;gap:4px}.gal img{width:72px;height:72px;border:1px solid #bbb}
.cell img.cam{display:none}.cell:hover img{display:none}.cell:hover img.cam{display:inline}
h3{margin-bottom:4px}.muted{color:#777}"""


def _bar_svg(diff: dict) -> str:
    if not diff:
        return "<p class='muted'>No leukocytes counted.</p>"
    w, row = 520, 22
    parts = [f"<svg width='{w + 240}' height='{row * len(diff) + 10}' role='img' aria-label='differential'>"]
    for i, (label, v) in enumerate(diff.items()):
        y = 5 + i * row
        bw, lo, hi = w * v["percent"] / 100, w * v["ci95"][0] / 100, w * v["ci95"][1] / 100
        parts.append(f"<text x='0' y='{y + 15}' font-size='13'>{html.escape(label)}</text>"
                     f"<rect x='170' y='{y + 3}' width='{bw:.1f}' height='{row - 8}' fill='#7b5ea7'/>"
                     f"<line x1='{170 + lo:.1f}' x2='{170 + hi:.1f}' y1='{y + row / 2}' y2='{y + row / 2}' "
                     f"stroke='#222' stroke-width='1.5'/>"
                     f"<text x='{175 + max(bw, hi):.1f}' y='{y + 15}' font-size='12'>{v['percent']:.1f}%</text>")
    parts.append("</svg>")
    return "".join(parts)


def _gallery(gallery_dir: Path) -> str:
    if not gallery_dir.exists():
        return "<p class='muted'>No cell crops.</p>"
    out = []
    def b64(p: Path) -> str:
        return f"data:image/jpeg;base64,{base64.b64encode(p.read_bytes()).decode()}"

    for d in sorted(p for p in gallery_dir.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.glob("*.jpg") if not p.name.endswith(".cam.jpg"))
        tags = ""
        for p in imgs:  # with a Grad-CAM map, hovering the crop shows where the network saw its class
            cam = p.with_name(p.stem + ".cam.jpg")
            img = f"<img src='{b64(p)}' title='{html.escape(p.stem)}' alt='{html.escape(d.name)}'>"
            tags += (f"<span class='cell'>{img}<img class='cam' src='{b64(cam)}' title='Grad-CAM: "
                     f"{html.escape(p.stem)}' alt='Grad-CAM'></span>") if cam.exists() else img
        out.append(f"<h3>{html.escape(d.name)} <span class='muted'>({len(imgs)} shown)</span></h3>"
                   f"<div class='gal'>{tags}</div>")
    return "".join(out) or "<p class='muted'>No cell crops.</p>"


def render_html(rep: dict, gallery_dir: Path) -> str:
    """A self-contained page (inline CSS, SVG chart, base64 crops) for one smear."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{v['count']}</td><td>{v['percent']:.1f}</td>"
                   f"<td>{v['ci95'][0]:.1f} – {v['ci95'][1]:.1f}</td></tr>" for k, v in rep["differential"].items())
    flags = "".join(f"<li class='flag'>{e(f['flag'])}: <span style='font-weight:400'>{e(f['detail'])}</span></li>"
                    for f in rep["flags"]) or "<li>none</li>"
    p = rep["prognosis"]
    if p["enabled"]:
        cls = {"positive": "pos", "negative": "neg"}.get(p["decision"], "ind")
        prog = (f"<p class='{cls}'>{e(p['decision'])}</p><p>{e(p['reason'])}</p>"
                f"<p class='muted'>k = {p['k']} COVID-19 RL of n = {p['n']} lymphoid cells; 95% CI "
                f"{100 * p['ci95'][0]:.1f}–{100 * p['ci95'][1]:.1f}%; threshold {100 * p['threshold']:.1f}%; "
                f"study rule without CI: {e(str(p['point_decision']))}</p>")
    else:
        prog = f"<p class='muted'>off: {e(p['reason'])}</p>"
    nrbc = rep["nrbc"]
    fam, conf = rep.get("familiarity"), rep.get("confidence")
    guard = (f" Unfamiliar (unlike the training laboratories' cells, not counted): {rep.get('unfamiliar', 0)}."
             + (f" Median familiarity score {fam['median_ood']:.2f} (about 1 on the training laboratories' cells)."
                if fam else "")
             + (f" Mean classifier confidence {conf['mean_score']:.2f} over {conf['cells']} cells." if conf else ""))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Smear {e(rep['smear_id'])}</title>
<style>{CSS}</style></head><body>
<h1>Smear {e(rep['smear_id'])}</h1>
<p>{rep['fields_used']} fields used, {rep['fields_failed']} failed; {rep['leukocytes_counted']} leukocytes counted.</p>
<h2>White-cell differential</h2>
<table><tr><th>class</th><th>count</th><th>%</th><th>95% CI ({e(rep['ci_method'])})</th></tr>{rows}</table>
{_bar_svg(rep['differential'])}
<p>Nucleated red cells: {nrbc['count']} ({nrbc['per_100_wbc'] if nrbc['per_100_wbc'] is not None else '–'} per 100
WBC, not in the differential). Platelets: {rep['platelets']}. Unidentified (sent to review, not counted):
{rep['unidentified']}.{e(guard)}</p>
<h2>Flags</h2><ul>{flags}</ul>
<h2>COVID-19 prognosis rule</h2>{prog}
<h2>Cell gallery</h2>{_gallery(gallery_dir)}
<p class="muted">Research use only; a pathologist reviews every report.</p>
</body></html>"""


def render_index(reports: list[dict]) -> str:
    """Run-level page listing the smears with links to their reports."""
    e = html.escape
    def top(r):
        return ", ".join(f"{k} {v['percent']:.0f}%" for k, v in list(r["differential"].items())[:4])

    rows = "".join(
        f"<tr><td><a href='smears/{e(safe_name(r['smear_id']))}/report.html'>{e(r['smear_id'])}</a></td>"
        f"<td>{r['fields_used']}</td><td>{r['fields_failed']}</td><td>{r['leukocytes_counted']}</td>"
        f"<td>{e(top(r))}</td>"
        f"<td>{e(', '.join(f['flag'] for f in r['flags']) or '–')}</td>"
        f"<td>{e(str(r['prognosis']['decision'] or 'off'))}</td></tr>" for r in reports)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Run index</title><style>{CSS}</style></head>
<body><h1>Smears in this run</h1><table><tr><th>smear</th><th>fields</th><th>failed</th><th>leukocytes</th>
<th>differential (top)</th><th>flags</th><th>prognosis</th></tr>{rows}</table></body></html>"""
