"""A run's report: config, plan, predicted vs measured memory, throughput, final metrics and plots.

Reads what a run leaves in RUN_DIR:

    config.toml            resolved config ([model] [train] [memory])          optional
    plan.json              {"predicted_peak_bytes", "budget_bytes"?, "parts": {name: bytes}, "plan": {...}}   optional
    metrics.jsonl          one record a line (seqfit.measure.metrics)         required
    memory_timeline.json   [[t, rss, anon, cuda], ...] or [{"t", "rss", ...}]  optional
    summary.json           final numbers: peak_rss, peak_anon, tokens_per_s, valid_ppl, measured_peak_bytes, ...  optional

and writes RUN_DIR/plots/*.png and RUN_DIR/report.md (images linked) or RUN_DIR/report.html
(images embedded as base64, so the one file can be mailed or attached to an issue).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqfit.errors import SeqfitError
from seqfit.measure.memory import format_bytes, parse_bytes
from seqfit.measure.metrics import read_metrics
from seqfit.measure.plots import plot_loss, plot_memory_timeline, plot_throughput, timeline_columns

__all__ = ["RunFiles", "load_run", "build_report"]


@dataclass
class RunFiles:
    run_dir: Path
    records: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    timeline: list[Any] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Section:
    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SeqfitError(f"{path} is not valid JSON: {e}") from None


def load_run(run_dir: Path | str) -> RunFiles:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SeqfitError(f"no run directory at {run_dir}")
    if not (run_dir / "metrics.jsonl").exists():
        raise SeqfitError(f"{run_dir} has no metrics.jsonl: not a run directory, or the run wrote no steps")
    config: dict[str, Any] = {}
    if (run_dir / "config.toml").exists():
        try:
            config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SeqfitError(f"{run_dir / 'config.toml'} is not valid TOML: {e}") from None
    return RunFiles(
        run_dir=run_dir,
        records=read_metrics(run_dir / "metrics.jsonl"),
        config=config,
        plan=_read_json(run_dir / "plan.json", {}),
        timeline=_read_json(run_dir / "memory_timeline.json", []),
        summary=_read_json(run_dir / "summary.json", {}),
    )


# -- numbers ----------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bytes_key(key: str) -> bool:
    key = key.lower()
    return (key in {"rss", "anon", "file", "budget", "cuda", "cuda_allocated", "cuda_reserved"} or key.endswith("_bytes")
            or any(word in key.split("_") for word in ("rss", "anon")) or key.startswith("peak_cuda"))


def _bytes(n: float) -> str:
    """Like format_bytes, with two decimals in GiB: 1.35 GiB and 1.30 GiB are different runs."""
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else format_bytes(n)


def _fmt(key: str, value: Any) -> str:
    if _is_number(value) and _is_bytes_key(key):
        return _bytes(value)
    if key == "ratio" and _is_number(value):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e3 and math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _last(records: list[dict], kind: str, *keys: str) -> Any:
    for record in reversed(records):
        if record.get("kind", "train") == kind:
            for key in keys:
                if _is_number(record.get(key)):
                    return record[key]
    return None


def _values(records: list[dict], key: str, kind: str | None = None) -> list[float]:
    return [r[key] for r in records if _is_number(r.get(key)) and math.isfinite(r[key])
            and (kind is None or r.get("kind", "train") == kind)]


def _timeline(run: RunFiles) -> list[Any]:
    """memory_timeline.json, else the rss/anon of metrics records that carry a time."""
    if run.timeline:
        return run.timeline
    rows = [r for r in run.records if _is_number(r.get("rss")) and _is_number(r.get("time"))]
    return [(r["time"], r["rss"], r.get("anon", r["rss"]), r.get("cuda_allocated", 0)) for r in rows]


def _budget(run: RunFiles) -> int | None:
    if _is_number(run.plan.get("budget_bytes")):
        return int(run.plan["budget_bytes"])
    text = run.config.get("memory", {}).get("budget")
    try:
        return parse_bytes(text) if text else None
    except ValueError:
        return None


def _measured_peak(run: RunFiles) -> tuple[int | None, str]:
    """The measured peak to set against the prediction, and where it came from."""
    s = run.summary
    for key in ("measured_peak_bytes", "peak_cuda", "peak_anon", "peak_rss"):
        if _is_number(s.get(key)) and s[key] > 0:
            return int(s[key]), f"summary.json {key}"
    for key in ("anon", "rss"):
        values = _values(run.records, key)
        if values:
            return int(max(values)), f"max {key} in metrics.jsonl"
    timeline = _timeline(run)
    if timeline:
        cols = timeline_columns(timeline)
        return int(max(cols["anon"] or cols["rss"])), "max anon in the memory timeline"
    return None, ""


# -- sections ---------------------------------------------------------------------------------------

def _summary(run: RunFiles) -> _Section:
    s, records = run.summary, run.records
    rows: list[list[str]] = []

    def add(name: str, key: str, value: Any) -> None:
        if value is not None:
            rows.append([name, _fmt(key, value)])

    steps = [r["step"] for r in records if _is_number(r.get("step"))]
    add("steps", "steps", s.get("steps", max(steps) if steps else None))
    add("final train loss", "loss", s.get("train_loss", _last(records, "train", "loss", "train_loss")))
    add("final validation loss", "loss", s.get("valid_loss", _last(records, "valid", "loss", "valid_loss")))
    add("final validation perplexity", "ppl", s.get("valid_ppl", _last(records, "valid", "ppl", "valid_ppl")))
    add("final validation accuracy", "acc", s.get("valid_accuracy", _last(records, "valid", "accuracy", "acc")))
    rates = _values(records, "tokens_per_s", "train")
    add("tokens/s", "tokens_per_s", s.get("tokens_per_s", statistics.median(rates) if rates else None))
    for key, name in (("peak_rss", "peak RSS"), ("peak_anon", "peak anonymous memory"), ("peak_cuda", "peak CUDA allocated")):
        add(name, key, s.get(key))
    predicted = run.plan.get("predicted_peak_bytes")
    measured, source = _measured_peak(run)
    add("predicted peak", "predicted_peak_bytes", predicted)
    add(f"measured peak ({source})" if measured else "measured peak", "measured_peak_bytes", measured)
    if _is_number(predicted) and predicted > 0 and measured:
        add("measured / predicted", "ratio", measured / predicted)
    budget = _budget(run)
    add("budget", "budget_bytes", budget)
    if budget and measured:
        rows.append(["fits the budget", f"yes ({_bytes(budget - measured)} to spare)" if measured <= budget
                     else f"NO ({_bytes(measured - budget)} over)"])
    return _Section("Summary", ["quantity", "value"], rows)


def _config(run: RunFiles) -> _Section | None:
    if not run.config:
        return None
    rows = []
    for section, values in run.config.items():
        if isinstance(values, dict):
            rows += [[f"[{section}] {key}", _fmt(key, value)] for key, value in values.items()]
        else:
            rows.append([section, _fmt(section, values)])
    return _Section("Config", ["key", "value"], rows)


def _memory(run: RunFiles) -> _Section | None:
    parts = run.plan.get("parts") or {}
    predicted = run.plan.get("predicted_peak_bytes")
    if not parts and not _is_number(predicted):
        return None
    total = predicted if _is_number(predicted) and predicted > 0 else sum(v for v in parts.values() if _is_number(v))
    rows = [[name, _bytes(value), f"{100 * value / total:.1f}%" if total else ""]
            for name, value in sorted(parts.items(), key=lambda kv: -kv[1] if _is_number(kv[1]) else 0)
            if _is_number(value)]
    if _is_number(predicted):
        rows.append(["**predicted peak**", _bytes(predicted), "100%"])
    measured, source = _measured_peak(run)
    notes = []
    if measured and _is_number(predicted) and predicted > 0:
        rows.append([f"**measured peak** ({source})", _bytes(measured), f"{100 * measured / predicted:.1f}%"])
        notes.append(f"The run used {measured / predicted:.2f}x the predicted peak.")
    return _Section("Memory: predicted vs measured", ["part", "bytes", "of predicted peak"], rows, notes)


def _plan(run: RunFiles) -> _Section | None:
    plan = run.plan.get("plan") or {}
    if not plan:
        return None
    return _Section("Plan", ["knob", "value"], [[key, _fmt(key, value)] for key, value in plan.items()])


def _throughput(run: RunFiles) -> _Section | None:
    rates = _values(run.records, "tokens_per_s", "train")
    if not rates:
        return None
    rows = [["median tokens/s", _fmt("", statistics.median(rates))], ["mean tokens/s", _fmt("", statistics.fmean(rates))],
            ["min tokens/s", _fmt("", min(rates))], ["max tokens/s", _fmt("", max(rates))], ["records", str(len(rates))]]
    times = _values(run.records, "step_time", "train") or _values(run.records, "seconds_per_step", "train")
    if times:
        rows.append(["median seconds/step", _fmt("", statistics.median(times))])
    return _Section("Throughput", ["quantity", "value"], rows)


def _final(run: RunFiles) -> _Section | None:
    if not run.summary:
        return None
    return _Section("Final metrics (summary.json)", ["metric", "value"],
                    [[key, _fmt(key, value)] for key, value in run.summary.items()])


def _plots(run: RunFiles) -> list[tuple[str, Path]]:
    """(caption, path) of each plot there is data for."""
    plots_dir = run.run_dir / "plots"
    out = []
    timeline = _timeline(run)
    if timeline:
        out.append(("Memory over time", plot_memory_timeline(
            timeline, plots_dir / "memory.png", budget_bytes=_budget(run),
            predicted_peak_bytes=run.plan.get("predicted_peak_bytes"), title=f"memory: {run.run_dir.name}")))
    for caption, plot, name in (("Loss", plot_loss, "loss.png"), ("Throughput", plot_throughput, "throughput.png")):
        try:
            out.append((caption, plot(run.records, plots_dir / name)))
        except SeqfitError:
            pass  # nothing of that kind was logged: no plot, the report says so
    return out


# -- rendering --------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_md(title: str, sections: list[_Section], plots: list[tuple[str, Path]], run_dir: Path) -> str:
    out = [f"# {title}", "", f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} from `{run_dir}`.", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if sec.rows:
            out.append("| " + " | ".join(sec.header) + " |")
            out.append("|" + "|".join("---" for _ in sec.header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in sec.rows]
            out.append("")
        out += [*sec.notes, ""] if sec.notes else []
    out += ["## Plots", ""]
    out += [f"![{caption}]({path.relative_to(run_dir).as_posix()})\n" for caption, path in plots] or ["No plottable data.", ""]
    return "\n".join(out)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "td:nth-child(n+2){text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}")


def _render_html(title: str, sections: list[_Section], plots: list[tuple[str, Path]], run_dir: Path) -> str:
    e = html.escape
    bold = lambda text: e(text).replace("**", "")  # noqa: E731  (markdown emphasis has no place here)
    out = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
           f"<p>Generated {datetime.datetime.now():%Y-%m-%d %H:%M} from <code>{e(str(run_dir))}</code>.</p>"]
    for sec in sections:
        out.append(f"<h2>{e(sec.title)}</h2>")
        if sec.rows:
            out.append("<table>")
            if any(sec.header):
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in sec.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{bold(c)}</td>" for c in row) + "</tr>" for row in sec.rows]
            out.append("</table>")
        out += [f"<p>{e(note)}</p>" for note in sec.notes]
    out.append("<h2>Plots</h2>")
    for caption, path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        out.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'><figcaption>{e(caption)}</figcaption></figure>")
    if not plots:
        out.append("<p>No plottable data.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: Path | str, *, fmt: str = "md", extra_plots: list[tuple[str, Path]] = ()) -> Path:
    """Write RUN_DIR/report.md (or report.html) and RUN_DIR/plots/*.png; returns the report's path.
    ``extra_plots``: (caption, path) of plots drawn elsewhere (a forecast run's forecasts), shown after the others."""
    if fmt not in ("md", "html"):
        raise SeqfitError(f"report format must be md or html, got {fmt!r}")
    run = load_run(run_dir)
    sections = [s for s in (_summary(run), _config(run), _plan(run), _memory(run), _throughput(run), _final(run)) if s]
    plots = _plots(run) + list(extra_plots)
    title = f"seqfit run report: {run.run_dir.resolve().name}"
    render = _render_md if fmt == "md" else _render_html
    path = run.run_dir / f"report.{fmt}"
    path.write_text(render(title, sections, plots, run.run_dir), encoding="utf-8")
    return path
