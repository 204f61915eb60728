"""Write the matrix as reports/semantics.md, semantics.html, semantics.png and .json."""

from __future__ import annotations

import hashlib
import html
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from faust_guarantees import FIXES

from .matrix import Cell, save_json
from .runner import ExperimentResult

COLUMNS = (
    ("duplicate_charges", "dup. charges"),
    ("lost", "lost"),
    ("output_duplicates", "output dups"),
    ("output_missing", "output missing"),
    ("balance_mismatches", "balance mismatches"),
    ("open_transactions", "open txns"),
    ("log_duplicates", "log dups"),
)

UPSTREAM = {
    "seek-uncommitted-partitions": "faust-streaming#596",
    "source-partition-transactions": "faust-streaming#177, #323",
    "commit-gate": "faust-streaming#517",
    "persisted-offsets": "(no upstream report found)",
    "wipe-unclean-state": "robinhood/faust#340",
    "route-metadata": "(no upstream report found)",
    "commit-at-revocation": "faust-streaming#502",
    "recovery-idle-wait": "cf. faust-streaming#47",
    "exact-gaps": "cf. faust-streaming#606, #312; robinhood/faust#625",
    "stalled-partition-heal": "faust-streaming#596; cf. robinhood/faust#625",
    "changelog-metadata": "cf. robinhood/faust#325",
    "shutdown-commit": "robinhood/faust#484, #684",
    "lso-consistency-check": "(no upstream report found)",
    "seek-after-queue-clear": "the faust-streaming#596 family",
    "commit-order": "(this project's at_most_once mode; Faust has none)",
    "livelock-position": "(no upstream report found)",
    "bulk-restore": "(speed; no upstream report found)",
}

Results = list[tuple[Cell, ExperimentResult]]


def versions() -> dict[str, str]:
    from infra.kafka import DEFAULT_VERSION

    return {
        "this project": project_version(), "Apache Kafka": DEFAULT_VERSION, "Python": platform.python_version(),
        "faust-streaming": version("faust-streaming"), "aiokafka": version("aiokafka"),
        "rocksdict": version("rocksdict"),
    }


#: The directories whose content decides what a lab run measures.
CODE_DIRS = ("faust_guarantees", "streams_app", "agents", "tables", "common", "lab", "payment_api", "infra", "outbox")


def code_version() -> str:
    """A fingerprint of the code a lab run measures: the git trees of :data:`CODE_DIRS`
    (docs, notes and reports may change in between), ``+changes`` if they differ
    from HEAD. ``lab matrix --resume`` reuses only cells measured on the same one."""
    repo = Path(__file__).resolve().parent.parent
    dirs = [d for d in CODE_DIRS if (repo / d).is_dir()]
    try:
        trees = subprocess.run(["git", "rev-parse", *(f"HEAD:{d}" for d in dirs)], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.split()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *dirs],
                               cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    digest = hashlib.sha1(" ".join(trees).encode()).hexdigest()[:12]
    return f"{digest}+changes" if dirty else digest


def project_version() -> str:
    """``commit abc1234 (code 0123456789ab)``: what a report measured (the lab's, the bench's)."""
    return f"{_commit()} (code {code_version()})"


def _commit() -> str:
    """The git commit the lab ran (with ``+changes`` when its code, :data:`CODE_DIRS`,
    differed: not the reports a run rewrites as it goes)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *(d for d in CODE_DIRS if (repo / d).is_dir())],
                               cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}{'+changes' if dirty else ''}"


def _cell(result: ExperimentResult, metric: str) -> str:
    value = result.counts[metric]
    rule = result.prediction.expect[metric]
    ok = result.verdict[metric]
    mark = "" if ok else " ✗"
    return f"{value} ({rule}){mark}" if rule != "any" else f"{value}"


def write_reports(results: Results, out: Path, *, title: str, scale: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "semantics.md", out / "semantics.html", out / "semantics.png", out / "semantics.json"]
    paths[0].write_text(markdown(results, title=title, scale=scale))
    paths[1].write_text(html_page(results, title=title, scale=scale))
    chart(results, paths[2])
    save_json(results, paths[3], code=code_version())
    return paths


def headline(results: Results) -> str:
    """How many cells held, the pipeline's apart from the stock-Faust reference cells
    (``FAUST_FIXES=none``), which are there to show what stock Faust breaks."""
    ours = [r for cell, r in results if cell.faust_fixes != "none"]
    stock = [r for cell, r in results if cell.faust_fixes == "none"]
    text = (f"**{sum(r.as_predicted for r in ours)} of {len(ours)} cells of this project's pipeline "
            "came out as the source text predicts.**")
    if stock:
        text += (f" Stock Faust, on the {len(stock)} reference cell{'' if len(stock) == 1 else 's'} run without the fixes: "
                 f"{sum(r.as_predicted for r in stock)} of {len(stock)} as predicted.")
    return text


def markdown(results: Results, *, title: str, scale: str) -> str:
    lines = [
        f"# {title}", "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
        "`faust -A streams_app lab matrix`. " + scale,
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
        headline(results) + " "
        "Each count is measured after the run drained, from the sink database and from "
        "Kafka read back with `read_committed` by a fresh consumer; `(=0)`, `(>0)` are the "
        "predictions, ✗ marks a prediction that failed.", "",
        "| cell | " + " | ".join(label for _, label in COLUMNS) + " | kills / restarts | as predicted | why |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for cell, r in results:
        row = [cell.label] + [_cell(r, m) for m, _ in COLUMNS] + [
            f"{r.injected.kills} / {r.injected.restarts}",
            "yes" if r.as_predicted else ("**no** (not drained)" if not r.drained else "**no**"),
            r.prediction.why,
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## What stock Faust does, and what this project does", "",
              ("faust-streaming is run with the workarounds of `faust_guarantees` (one module per fix in `faust_guarantees/fixes/`). "
               "Cells marked *stock Faust* run with `FAUST_FIXES=none`."), ""]
    for name, text in FIXES.items():
        lines.append(f"- **{name}** ({UPSTREAM.get(name, '')}): {text}")
    notes = [(c, r) for c, r in results if r.notes or r.counts.get("mismatch_examples")]
    if notes:
        lines += ["", "## Notes on individual runs", ""]
        for cell, r in notes:
            detail = "; ".join(r.notes + r.counts.get("mismatch_examples", [])[:3])
            lines.append(f"- {cell.label} (`{r.run_id}`): {detail}")
    return "\n".join(lines) + "\n"


def html_page(results: Results, *, title: str, scale: str) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in COLUMNS)
    rows = []
    for cell, r in results:
        tds = "".join(
            f"<td class='{'ok' if r.verdict[m] else 'bad'}'>{html.escape(_cell(r, m))}</td>" for m, _ in COLUMNS
        )
        rows.append(
            f"<tr><th>{html.escape(cell.label)}</th>{tds}<td>{r.injected.kills} / {r.injected.restarts}</td>"
            f"<td class='{'ok' if r.as_predicted else 'bad'}'>{'yes' if r.as_predicted else 'no'}</td>"
            f"<td>{html.escape(r.prediction.why)}</td></tr>"
        )
    fixes = "".join(
        f"<li><b>{html.escape(n)}</b> ({html.escape(UPSTREAM.get(n, ''))}): {html.escape(t)}</li>"
        for n, t in FIXES.items()
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2rem}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}}
.ok{{background:#ecfdf5}} .bad{{background:#fee2e2;font-weight:600}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(scale)} Versions: {html.escape(', '.join(f'{k} {v}' for k, v in versions().items()))}.</p>
<img src="semantics.png" alt="duplicates and losses per cell" style="max-width:100%">
<table><tr><th>cell</th>{head}<th>kills / restarts</th><th>as predicted</th><th>why</th></tr>
{''.join(rows)}</table><h2>What stock Faust does, and what this project does</h2><ul>{fixes}</ul></body></html>
"""


def chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [cell.label for cell, _ in results]
    metrics = [("duplicate_charges", "duplicate charges"), ("lost", "lost events"),
               ("output_duplicates", "duplicates in Kafka output"), ("balance_mismatches", "balance mismatches")]
    fig, ax = plt.subplots(figsize=(12, 0.42 * len(results) + 1.5))
    height = 0.2
    for i, (metric, name) in enumerate(metrics):
        values = [r.counts[metric] for _, r in results]
        ax.barh([y + i * height for y in range(len(results))], values, height=height, label=name)
    ax.set_yticks([y + 1.5 * height for y in range(len(results))])
    ax.set_yticklabels([("" if r.as_predicted else "✗ ") + label for label, (_, r) in zip(labels, results)],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_xlabel("count after the run (symlog scale)")
    ax.set_title("Duplicates and losses per guarantee / sink / fault")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
