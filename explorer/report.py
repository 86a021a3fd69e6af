"""A self-contained HTML report of an audit: figures, tables and configuration in one file.

plotly.js is written into the file once, so the report opens offline and can be archived or
attached to a paper as it is.
"""

from __future__ import annotations

import html
import json
from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from explorer import charts

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #111827; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #e5e7eb; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #d1d5db; padding: 4px 10px; text-align: left; }
th { background: #f3f4f6; } pre { background: #f9fafb; padding: 1em; overflow-x: auto; }
.note { color: #4b5563; font-size: 0.95em; }
.warning { background: #fef3c7; border-left: 4px solid #d97706; padding: 0.5em 1em; }
"""


def _table(frame) -> str:
    return frame.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")


def html_report(result, figures: Mapping[str, go.Figure], *, model_description: str, data_source: str) -> str:
    """The audit as one HTML page; ``figures`` are drawn in order under their titles."""
    parts = []
    for i, (title, fig) in enumerate(figures.items()):
        fig = go.Figure(fig).update_layout(title=None)  # the section heading names it
        # The first figure carries plotly.js inline; the others reuse it.
        body = fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False, config={"displaylogo": False})
        parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    per_t = pd.DataFrame(result.per_t).rename(columns={
        "t": "t", "selection_auc": "AUC (selection half)", "auc": "AUC (report half)",
        "asr": "ASR (report half)", "tpr_at_1pct_fpr": "TPR@1%FPR (report half)",
    })
    config = {k: v for k, v in result.to_dict().items() if k not in ("metrics", "per_t", "blind_baseline")}
    chosen = (f"The timestep t = {result.chosen_t} was chosen on the selection half by {html.escape(result.selection)}"
              if result.uses_timestep else f"{html.escape(result.attack)} ignores t (it uses its own steps), so none was chosen")
    baseline = result.blind_baseline
    style = ' class="warning"' if baseline is not None and baseline.separable else ""
    blind = "" if baseline is None else (
        f"<h2>Blind baseline</h2>\n<p{style}>{html.escape(baseline.sentence())}</p>\n"
        f'<p class="note">Features: {html.escape(baseline.features)}.</p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Membership audit: {html.escape(result.model_name)} / {html.escape(result.attack)}</title>
<style>{_STYLE}</style></head><body>
<h1>Membership-inference audit: {html.escape(result.model_name)}, attack {html.escape(result.attack)}</h1>
<p>{html.escape(model_description)}</p>
<p>Data: {html.escape(data_source)}: {result.n_members:,} members and {result.n_nonmembers:,} non-members.</p>
<p class="note">Protocol: members and non-members were each split 50/50 (seed {result.seed}) into a selection
half and a report half. {chosen}; every metric below is measured on the report half, with 95%
percentile bootstrap confidence intervals ({result.n_bootstrap} resamples, members and non-members resampled
separately). TPR at an FPR is the highest TPR whose realised FPR does not exceed the target.</p>
<h2>Summary</h2>
<pre>{html.escape(result.summary())}</pre>
<h2>Metrics at the chosen t</h2>
{_table(charts.single_metrics_table(result))}
{blind}
{''.join(parts)}
<h2>Per timestep</h2>
{_table(per_t)}
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(config, indent=2))}</pre>
<p class="note">Made with the SimA explorer. The per-sample statistics are in the CSV download of the same audit.</p>
</body></html>
"""
