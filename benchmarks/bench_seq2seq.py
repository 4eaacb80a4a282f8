"""Encoder-decoder (issue 15): date normalisation to ISO 8601, decoder-loss memory at a 50k vocabulary, planner accuracy.

Three sections, each runnable alone (every number comes from the `seqfit` command line, run as a user would):

  dates     dates written many human ways -> YYYY-MM-DD, character level. Babel's localized date formats
            (11 locales x short/medium/long/full) and hand-made English patterns, dates 1900-2099, fixed seed.
            Train / valid / test hold *disjoint days* (20,000 / 1,000 / 2,000 pairs), so every test date is
            unseen. Target: >= 99% exact match on the test split (`seqfit evaluate --split test`), greedy and
            beam 5. The recipe was chosen on the valid split only.
  memory    a 50,000-entry target vocabulary, batch 64, target length 50: `seqfit plan --verify` with the full
            logits and with the chunked loss, peak above the import (the probe's measured peak minus its
            baseline_bytes, the anonymous memory after imports, before the model is built) and their ratio.
  planner   predicted (memory/estimate_seq2seq.py) vs measured peak (`seqfit plan --verify`, a child running
            real steps on the worst batch) over seq2seq configs that differ where memory differs; then a
            `seqfit train --budget X --max-steps 20` run where X is below the unconstrained plan's prediction.
            Target: |error| <= 10% on every config, the budget run under X.

Ambiguity (dates): a text must determine its date. Two-digit years are ambiguous over 1900-2099 ("98"), so
every Babel pattern's `yy` is widened to a four-digit year. Numeric day/month order is ambiguous across
locales ("03/04/1998" is 4 March in en_US, 3 April in en_GB), so the one month-first numeric pattern (en_US
short, M/d/yy) is left out: every numeric pattern is day-first (or year-first: yyyy/MM/dd, yyyyMMdd, sv_SE's
y-MM-dd). The generator checks it: over every day of a leap year and over all generated pairs, no text maps
to two dates.

    python benchmarks/bench_seq2seq.py [--quick] [--only dates|memory|planner[,...]]

Each section writes benchmarks/results/seq2seq-<section>[-quick].json. Runs use one torch thread
(OMP_NUM_THREADS=1): the machine is shared, so memory is the figure to trust, times are indicative.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import WORK, print_table, write_result  # noqa: E402

MB = 2**20
ROOT = WORK / "seq2seq"
SECTIONS = ("dates", "memory", "planner")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def seqfit(*args, check: bool = True, timeout: float = 6 * 3600) -> subprocess.CompletedProcess:
    """Run the seqfit command line (this interpreter's package) with one thread."""
    cmd = [sys.executable, "-m", "seqfit", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def seqfit_json(*args) -> dict:
    out = seqfit(*args, "--json").stdout
    return json.loads(out[out.index("{"):])  # the JSON object (indented) is the whole of stdout


def command_line(*args) -> str:
    return "seqfit " + " ".join(map(str, args))


# ---------------------------------------------------------------------------------------------- dates

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_PT", "sv_SE", "pl_PL", "da_DK")
WIDTHS = ("short", "medium", "long", "full")
LEFT_OUT = {("en_US", "short")}  # M/d/yy: the only month-first numeric pattern (see the module docstring)
FIRST_DAY, LAST_DAY = dt.date(1900, 1, 1), dt.date(2099, 12, 31)
ORDINAL_WORDS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
                 "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth twenty-first "
                 "twenty-second twenty-third twenty-fourth twenty-fifth twenty-sixth twenty-seventh twenty-eighth "
                 "twenty-ninth thirtieth thirty-first").split()
ROMAN = "I II III IV V VI VII VIII IX X XI XII".split()
MONTHS = ("January February March April May June July August September October November December").split()


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# hand-made English and numeric writings, each unambiguous
HANDMADE = {
    "ordinal-of": lambda d: f"{_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",  # 3rd of March 1998
    "the-ordinal-of": lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    "month-ordinal": lambda d: f"{MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}",  # March 3rd, 1998
    "ordinal-words": lambda d: f"the {ORDINAL_WORDS[d.day - 1]} of {MONTHS[d.month - 1]} {d.year}",
    "upper": lambda d: f"{MONTHS[d.month - 1].upper()} {d.day}, {d.year}",
    "lower-nocomma": lambda d: f"{MONTHS[d.month - 1].lower()} {d.day} {d.year}",
    "dd-mon-yyyy": lambda d: f"{d.day:02d}-{MONTHS[d.month - 1][:3]}-{d.year}",  # 04-Mar-1998
    "roman-month": lambda d: f"{d.day}.{ROMAN[d.month - 1]}.{d.year}",  # 4.III.1998
    "yyyy/mm/dd": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "yyyymmdd": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",
}


def date_formats() -> list[tuple[str, object]]:
    """(name, date -> text) of every writing: Babel's patterns (two-digit years widened) and HANDMADE."""
    from babel.dates import format_date, get_date_format

    out = []
    for loc in LOCALES:
        for width in WIDTHS:
            if (loc, width) in LEFT_OUT:
                continue
            pattern = get_date_format(width, locale=loc).pattern
            if "yyyy" not in pattern:
                pattern = pattern.replace("yy", "y")  # two-digit years -> the full year
            out.append((f"{loc}/{width}", lambda d, p=pattern, loc=loc: format_date(d, p, locale=loc)))
    out.extend(HANDMADE.items())
    return out


def check_unambiguous(formats, pairs) -> int:
    """Raise if a text maps to two dates, over every day of leap year 2000 (all writings) and over ``pairs``."""
    seen: dict[str, str] = {}
    day = dt.date(2000, 1, 1)
    texts = ((f(day + dt.timedelta(i)), (day + dt.timedelta(i)).isoformat()) for i in range(366) for _, f in formats)
    for text, iso in [*texts, *((p["src"], p["tgt"]) for p in pairs)]:
        if seen.setdefault(text, iso) != iso:
            raise AssertionError(f"ambiguous writing {text!r}: {seen[text]} or {iso}")
    return len(seen)


def write_dates(root: Path, sizes: dict[str, int], seed: int = 15) -> dict:
    """JSONL pairs {"src": text, "tgt": "YYYY-MM-DD"}; each split its own days (disjoint), writings uniform."""
    rng = random.Random(seed)
    formats = date_formats()
    days = list(range((LAST_DAY - FIRST_DAY).days + 1))
    rng.shuffle(days)
    root.mkdir(parents=True, exist_ok=True)
    used, splits, lo = {}, {}, 0
    for split, n in sizes.items():
        pairs = []
        for offset in days[lo:lo + n]:
            d = FIRST_DAY + dt.timedelta(offset)
            name, f = rng.choice(formats)
            pairs.append({"src": f(d), "tgt": d.isoformat(), "format": name})
        lo += n
        path = root / f"{split}.jsonl"
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        splits[split], used[split] = path, pairs
    distinct = check_unambiguous(formats, [p for ps in used.values() for p in ps])
    return {"paths": splits, "formats": [n for n, _ in formats], "distinct_texts_checked": distinct,
            "examples": [p["src"] + " -> " + p["tgt"] for p in used["train"][:12]],
            "longest_source": max(len(p["src"]) for ps in used.values() for p in ps)}


# ---------------------------------------------------------------------------------------------- synthetic pairs

def _words(n: int, rng: random.Random, prefix: str = "") -> list[str]:
    """n distinct pronounceable words (consonant-vowel syllables)."""
    cons, vows, out, seen = "bcdfghjklmnprstvz", "aeiou", [], set()
    while len(out) < n:
        w = prefix + "".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def write_word_pairs(root: Path, *, src_vocab: int, tgt_vocab: int, pairs: int, src_len: tuple[int, int],
                     tgt_len: tuple[int, int], seed: int = 0) -> Path:
    """A word-level seq2seq store whose vocabularies have exactly ``src_vocab`` / ``tgt_vocab`` entries (the 3
    specials included): every word occurs in the train split (the first words of the targets run through the
    whole target vocabulary once). Lengths are drawn uniformly in the ranges; the first 64 pairs are the longest
    on both sides (the worst batch). Returns the data directory (prepared once, reused)."""
    out = root / "data"
    if (out / "meta.json").is_file():
        return out
    rng = random.Random(seed)
    sw, tw = _words(src_vocab - 3, rng, "s"), _words(tgt_vocab - 3, rng)
    s_order, t_order = sw[:], tw[:]
    rng.shuffle(s_order)
    rng.shuffle(t_order)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", pairs), ("valid", 64)):
        lines = []
        for i in range(n):
            S = src_len[1] if split == "train" and i < 64 else rng.randint(*src_len)
            T = tgt_len[1] if split == "train" and i < 64 else rng.randint(*tgt_len)
            src = [s_order.pop() if s_order and split == "train" else rng.choice(sw) for _ in range(S)]
            tgt = [t_order.pop() if t_order and split == "train" else rng.choice(tw) for _ in range(T)]
            lines.append(json.dumps({"src": " ".join(src), "tgt": " ".join(tgt)}) + "\n")
        if split == "train" and (s_order or t_order):
            raise ValueError(f"{pairs} pairs are too few to hold every word once")
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(lines), encoding="utf-8")
    seqfit("prepare", "--train", paths["train"], "--valid", paths["valid"], "--task", "seq2seq", "--text-field", "src",
           "--target-field", "tgt", "--separate-vocab", "--min-freq", "1", "--out", out)
    meta = json.loads((out / "meta.json").read_text())
    got = (meta["vocab_size"], meta["target_vocab_size"])
    if got != (src_vocab, tgt_vocab):
        raise AssertionError(f"vocabularies {got}, wanted {(src_vocab, tgt_vocab)}")
    return out


# ---------------------------------------------------------------------------------------------- memory

# (name, source vocabulary, target vocabulary, pairs, source lengths, target lengths); the first 64 pairs of the
# train split are the longest on both sides, so every probe's worst batch is 64 x (S, T) at the top of the ranges
STORES = {
    "v50k-50": (50_000, 50_000, 1200, (40, 50), (40, 50)),
    "v20k-60": (20_000, 20_000, 800, (30, 60), (30, 60)),
    "v10k-100x50": (10_000, 10_000, 400, (50, 100), (25, 50)),
    "v5k-150": (5_000, 5_000, 300, (75, 150), (75, 150)),
    "v20k-60-fixed": (20_000, 20_000, 800, (60, 60), (60, 60)),  # every batch is the worst one: for --budget runs
    "v5k-300x20": (5_000, 5_000, 400, (150, 300), (10, 20)),  # long sources, short targets: the encoder decides
    "v5k-30": (5_000, 5_000, 300, (15, 30), (15, 30)),  # --quick
}


def store(name: str) -> Path:
    src, tgt, pairs, src_len, tgt_len = STORES[name]
    return write_word_pairs(ROOT / name, src_vocab=src, tgt_vocab=tgt, pairs=pairs, src_len=src_len,
                            tgt_len=tgt_len, seed=len(name))


def _options(flags: tuple) -> dict:
    """("--hidden", 256, "--bidirectional", ...) -> seqfit.config option keys (for the probe's RunCfg)."""
    out, i = {}, 0
    while i < len(flags):
        key = flags[i].lstrip("-").replace("-", "_")
        if i + 1 < len(flags) and not str(flags[i + 1]).startswith("--"):
            out[key], i = flags[i + 1], i + 2
        elif key.startswith("no_"):
            out[key[3:]], i = False, i + 1
        else:
            out[key], i = True, i + 1
    return out


MEMORY_MODEL = ("--task", "seq2seq", "--layers", "1", "--batch-size", "64", "--device", "cpu")
MEMORY_ROWS = [  # (hidden = embed, loss flags)
    (128, ("--loss", "full")), (128, ("--loss", "chunked")),
    (256, ("--loss", "full")), (256, ("--loss", "chunked")), (256, ("--loss", "chunked", "--loss-chunk", "256")),
]


def memory_section(quick: bool, echo=print) -> dict:
    """Full logits vs the chunked loss at V = 50k, B = 64, T = 50: the probe's peak minus its import baseline."""
    import seqfit
    from seqfit.config import from_options
    from seqfit.memory.probe import measure_run

    name = "v5k-30" if quick else "v50k-50"
    data = store(name)
    meta = json.loads((data / "meta.json").read_text())
    rows, commands = [], []
    for hidden, loss in MEMORY_ROWS[:2] if quick else MEMORY_ROWS:
        flags = (*MEMORY_MODEL, "--hidden", hidden, "--embed", hidden, *loss)
        opts = {k: (int(v) if isinstance(v, str) and v.isdigit() else v) for k, v in _options(flags).items()}
        predicted = seqfit.plan(data, **opts)
        got = measure_run(from_options(opts), data, steps=3, threads=1)
        above = got["peak_bytes"] - got["baseline_bytes"]
        plan = predicted["plan"]
        rows.append({"hidden": hidden, "loss": plan["loss"], "chunk_rows": plan["loss_chunk"] or "default",
                     "parameters": predicted["sizes"]["parameters"], "weights_mb": predicted["sizes"]["weights"] / MB,
                     "baseline_mb": got["baseline_bytes"] / MB, "measured_peak_mb": got["peak_bytes"] / MB,
                     "above_import_mb": above / MB, "predicted_peak_mb": predicted["predicted_peak_bytes"] / MB,
                     # what the output layer itself holds at the predicted peak (logits or one chunk, their gradients)
                     "predicted_output_loss_mb": predicted["parts"]["output_loss"] / MB,
                     "prediction_error": (predicted["predicted_peak_bytes"] - got["peak_bytes"]) / got["peak_bytes"],
                     "step_s": min(got["step_seconds"][1:] or got["step_seconds"])})
        commands.append(command_line("plan", data, *flags, "--verify"))
        echo(f"H={hidden} {plan['loss']:<8} peak {got['peak_bytes'] / MB:8.1f} MB, above the import {above / MB:8.1f} MB")
    ratios, output_ratios = {}, {}
    for r in rows:
        if r["loss"] == "chunked":
            full = next(f for f in rows if f["hidden"] == r["hidden"] and f["loss"] == "full")
            r["full_over_chunked"] = full["above_import_mb"] / r["above_import_mb"]
            ratios[f"H={r['hidden']} chunk {r['chunk_rows']}"] = r["full_over_chunked"]
            output_ratios[f"H={r['hidden']} chunk {r['chunk_rows']}"] = (full["predicted_output_loss_mb"]
                                                                         / r["predicted_output_loss_mb"])
    return {"name": "seq2seq-memory" + ("-quick" if quick else ""),
            "note": f"target vocabulary {meta['target_vocab_size']:,} (source {meta['vocab_size']:,}), batch 64, "
                    f"target length {STORES[name][4][1]} (+ <eos>), SGD, dropout 0.2; peak = probe's anonymous peak",
            "rows": rows, "summary": {"full_over_chunked_above_import": ratios,
                                      "full_over_chunked_output_layer_predicted": output_ratios},
            "commands": commands + ["(each measured as `seqfit plan --verify` does: seqfit.memory.probe.measure_run, "
                                    "whose baseline_bytes --verify does not print)"]}


# ---------------------------------------------------------------------------------------------- planner

S2S = ("--task", "seq2seq", "--device", "cpu")
# (name, store, flags): each differs from the others where memory differs
PLANNER_GRID = [
    ("lstm-feed-general", "v20k-60", ("--layers", 1, "--hidden", 256, "--embed", 256, "--batch-size", 64,
                                      "--loss", "full")),
    ("gru-2l-dot-nofeed", "v20k-60", ("--cell", "gru", "--layers", 2, "--hidden", 512, "--embed", 256,
                                      "--attention", "dot", "--no-input-feed", "--batch-size", 64, "--loss", "chunked")),
    ("lstm-bi-additive", "v10k-100x50", ("--layers", 1, "--hidden", 256, "--embed", 128, "--bidirectional",
                                         "--attention", "additive", "--batch-size", 32, "--loss", "full")),
    ("gru-bi-feed-adam", "v10k-100x50", ("--cell", "gru", "--layers", 1, "--hidden", 384, "--embed", 128,
                                         "--bidirectional", "--optimizer", "adam", "--batch-size", 48)),
    ("lstm-50k-full", "v50k-50", ("--layers", 1, "--hidden", 256, "--embed", 256, "--batch-size", 64, "--loss", "full")),
    ("lstm-50k-chunked", "v50k-50", ("--layers", 1, "--hidden", 256, "--embed", 256, "--batch-size", 64,
                                     "--loss", "chunked")),
    ("lstm-2l-150-nofeed", "v5k-150", ("--layers", 2, "--hidden", 512, "--embed", 256, "--no-input-feed",
                                       "--batch-size", 32, "--loss", "full")),
    ("lstm-2l-150-ckpt", "v5k-150", ("--layers", 2, "--hidden", 512, "--embed", 256, "--no-input-feed",
                                     "--batch-size", 32, "--loss", "full", "--checkpoint-time", -1)),
    ("lstm-feed-additive-ckpt", "v5k-150", ("--layers", 1, "--hidden", 256, "--embed", 128, "--attention", "additive",
                                            "--batch-size", 16, "--checkpoint-time", 16)),
    ("gru-bi-2l-150", "v5k-150", ("--cell", "gru", "--layers", 2, "--hidden", 512, "--embed", 256, "--bidirectional",
                                  "--attention", "general", "--no-input-feed", "--batch-size", 32)),
    # activations, not the vocabulary, decide these: 151 fed steps of a 512 decoder; the (B, T, S, H) tanh of
    # additive attention over 150 x 151 steps
    ("lstm-feed-512-150", "v5k-150", ("--layers", 1, "--hidden", 512, "--embed", 256, "--batch-size", 32,
                                      "--loss", "chunked")),
    ("lstm-additive-150", "v5k-150", ("--layers", 1, "--hidden", 256, "--embed", 128, "--attention", "additive",
                                      "--no-input-feed", "--batch-size", 32, "--loss", "chunked")),
    ("gru-feed-additive-512", "v5k-150", ("--cell", "gru", "--layers", 1, "--hidden", 512, "--embed", 256,
                                          "--attention", "additive", "--batch-size", 16, "--loss", "chunked")),
    ("lstm-bi-2l-src300", "v5k-300x20", ("--layers", 2, "--hidden", 512, "--embed", 256, "--bidirectional",
                                         "--attention", "general", "--no-input-feed", "--batch-size", 32,
                                         "--loss", "chunked")),
    ("gru-bi-src300-ckpt", "v5k-300x20", ("--cell", "gru", "--layers", 2, "--hidden", 512, "--embed", 256,
                                          "--bidirectional", "--no-input-feed", "--batch-size", 32,
                                          "--loss", "chunked", "--checkpoint-time", -1)),
]
QUICK_GRID = [
    ("lstm-feed-general", "v5k-30", ("--layers", 1, "--hidden", 128, "--embed", 64, "--batch-size", 32)),
    ("gru-bi-additive-nofeed", "v5k-30", ("--cell", "gru", "--layers", 1, "--hidden", 128, "--embed", 64,
                                          "--bidirectional", "--attention", "additive", "--no-input-feed",
                                          "--batch-size", 32, "--loss", "chunked")),
]
# (store, flags, budget): unconstrained, --loss auto takes the chunked loss at micro-batch 64 (predicted ~650 MiB,
# Adam's state included); under 600 MiB the planner has to take a smaller micro-batch or checkpointing
BUDGET_RUN = ("v20k-60-fixed", ("--layers", 1, "--hidden", 256, "--embed", 256, "--batch-size", 64, "--optimizer",
                                "adam", "--lr", "0.001", "--loss", "auto"), "600MB")
QUICK_BUDGET = ("v5k-30", ("--layers", 1, "--hidden", 128, "--embed", 64, "--batch-size", 32, "--loss", "auto"), "300MB")


def _plan_row(name: str, data: Path, flags: tuple, echo) -> dict:
    got = seqfit_json("plan", data, *S2S, *flags, "--verify", "--verify-steps", 3)
    p = got["plan"]
    row = {"name": name, "store": data.parent.name, "loss": p["loss"], "chunk": p["loss_chunk"],
           "ckpt": p["checkpoint_time"], "micro": p["micro_batch"], "optimizer": p["optimizer"],
           "predicted_mb": got["predicted_peak_bytes"] / MB, "measured_mb": got["measured_peak_bytes"] / MB,
           "error": got["prediction_error"], "phase": got["peak_phase"],
           "over_baseline": got["measured_peak_bytes"] / got["parts"]["baseline"]}
    details = {"parts_mb_at_peak": {k: round(v / MB, 1) for k, v in got["parts"].items()},
               "phases_mb": {k: round(v / MB, 1) for k, v in got["phases"].items()},
               "command": command_line("plan", data, *S2S, *flags, "--verify", "--verify-steps", 3, "--json")}
    echo(f"{name:<24} predicted {row['predicted_mb']:8.1f} MB  measured {row['measured_mb']:8.1f} MB  "
         f"{row['error']:+6.1%}  ({row['over_baseline']:.1f}x the runtime baseline, peak in {row['phase']})")
    return row, details


def _budget_row(data: Path, flags: tuple, budget: str, echo) -> dict:
    free = seqfit_json("plan", data, *S2S, *flags, "--verify", "--verify-steps", 3)  # the unconstrained plan, measured
    chosen = seqfit_json("plan", data, *S2S, *flags, "--budget", budget)
    run = ROOT / "budget-run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    args = ("train", data, "--out", run, *S2S, *flags, "--budget", budget, "--max-steps", 20, "--checkpoint-every", 0,
            "--log-every", 5, "--eval-batches", 1)
    started = time.perf_counter()
    seqfit(*args)
    summary = json.loads((run / "summary.json").read_text())
    from seqfit.measure.memory import parse_bytes

    limit = parse_bytes(budget)
    p = chosen["plan"]
    row = {"budget": budget, "unconstrained_predicted_mb": free["predicted_peak_bytes"] / MB,
           "unconstrained_measured_mb": free["measured_peak_bytes"] / MB,
           "unconstrained_plan": _short(free["plan"]), "chosen_plan": _short(p),
           "chosen_predicted_mb": p["predicted_peak_bytes"] / MB, "train_plan": _short(summary["plan"]),
           "train_peak_anon_mb": summary["peak_anon"] / MB, "train_peak_rss_mb": summary["peak_rss"] / MB,
           "under_budget": summary["peak_anon"] <= limit, "rss_under_budget": summary["peak_rss"] <= limit,
           "steps": summary["step"], "seconds": round(time.perf_counter() - started, 1), "command": command_line(*args)}
    echo(f"--budget {budget}: unconstrained {row['unconstrained_plan']} predicted {row['unconstrained_predicted_mb']:.0f} MB "
         f"(measured {row['unconstrained_measured_mb']:.0f} MB);"
         f" chose {row['chosen_plan']} predicted {row['chosen_predicted_mb']:.0f} MB; 20 steps peaked at "
         f"{row['train_peak_anon_mb']:.0f} MB anonymous ({row['train_peak_rss_mb']:.0f} MB resident)")
    return row


def _short(plan: dict) -> str:
    ck = f" ck{plan['checkpoint_time']}" if plan["checkpoint_time"] else ""
    loss = plan["loss"] + (f"/{plan['loss_chunk']}" if plan["loss"] == "chunked" and plan["loss_chunk"] else "")
    return f"{plan['micro_batch']}x{plan['accumulate']}{ck} {loss}"


def planner_section(quick: bool, echo=print) -> dict:
    measured = [(name, _plan_row(name, store(s), flags, echo)) for name, s, flags in (QUICK_GRID if quick else PLANNER_GRID)]
    rows, details = [r for _, (r, _) in measured], {name: d for name, (_, d) in measured}
    s, flags, budget = QUICK_BUDGET if quick else BUDGET_RUN
    budget_row = _budget_row(store(s), flags, budget, echo)
    errors = [abs(r["error"]) for r in rows]
    return {"name": "seq2seq-planner" + ("-quick" if quick else ""),
            "note": "predicted (estimate_seq2seq) vs measured peak (seqfit plan --verify: 3 steps on the worst batch), MiB",
            "rows": rows, "budget_row": budget_row, "details": details,
            "summary": {"configs": len(rows), "max_abs_error": max(errors), "mean_abs_error": sum(errors) / len(errors),
                        "within_10pct": sum(e <= 0.10 for e in errors),
                        "peaks_over_2x_baseline": sum(r["over_baseline"] >= 2 for r in rows),
                        "budget_run": f"--budget {budget}: unconstrained {budget_row['unconstrained_plan']} predicted "
                                      f"{budget_row['unconstrained_predicted_mb']:.0f} / measured "
                                      f"{budget_row['unconstrained_measured_mb']:.0f} MiB; chosen {budget_row['chosen_plan']}"
                                      f", 20 training steps peaked at {budget_row['train_peak_anon_mb']:.0f} MiB anonymous",
                        "budget_run_under": budget_row["under_budget"]}}


# ---------------------------------------------------------------------------------------------- dates (section)

DATE_SIZES = {"train": 20_000, "valid": 1_000, "test": 2_000}
QUICK_DATE_SIZES = {"train": 4_000, "valid": 300, "test": 500}
# Chosen on the valid split (1,000 pairs, greedy exact match); the test split is evaluated only by the final run.
# Candidates (same model, Adam 3e-3, clip 1, dropout 0.1, batch 64, one thread):
#   plateau schedule, 10 epochs: 99.3%   (errors: spelled-out ordinal days, yyyy/mm/dd copying the month)
#   plateau schedule, 16 epochs: 99.9%
#   cosine, 200 warm-up steps, 12 epochs: 99.8%   <- taken: within one pair of the best for 3/4 of the steps
DATE_RECIPE = ("--task", "seq2seq", "--cell", "lstm", "--layers", 1, "--hidden", 256, "--embed", 64, "--bidirectional",
               "--attention", "general", "--no-input-feed", "--dropout", 0.1, "--optimizer", "adam", "--lr", 0.003,
               "--clip", 1, "--batch-size", 64, "--schedule", "cosine", "--warmup", 200, "--checkpoint-every", 0,
               "--log-every", 100)
DATE_EPOCHS, QUICK_DATE_EPOCHS = 12, 2
DATE_SELECTION = [{"schedule": "plateau", "epochs": 10, "valid_exact_match_greedy": 0.993},
                  {"schedule": "plateau", "epochs": 16, "valid_exact_match_greedy": 0.999},
                  {"schedule": "cosine (warm-up 200)", "epochs": 12, "valid_exact_match_greedy": 0.998, "chosen": True}]


def dates_section(quick: bool, echo=print) -> dict:
    root = ROOT / ("dates-quick" if quick else "dates")
    info = write_dates(root / "pairs", QUICK_DATE_SIZES if quick else DATE_SIZES)
    data, run = root / "data", root / "run"
    paths = info["paths"]
    prepare = ("prepare", "--train", paths["train"], "--valid", paths["valid"], "--test", paths["test"], "--task",
               "seq2seq", "--text-field", "src", "--target-field", "tgt", "--level", "char", "--separate-vocab",
               "--out", data, "--overwrite")
    seqfit(*prepare)
    if run.exists():
        import shutil

        shutil.rmtree(run)
    recipe = tuple(20 if quick and prev == "--warmup" else v for prev, v in zip(("",) + DATE_RECIPE, DATE_RECIPE))
    train = ("train", data, "--out", run, *recipe, "--epochs", QUICK_DATE_EPOCHS if quick else DATE_EPOCHS)
    echo(command_line(*train))
    started, cpu0 = time.perf_counter(), os.times()
    seqfit(*train)
    cpu1 = os.times()
    train_s = time.perf_counter() - started
    summary = json.loads((run / "summary.json").read_text())
    valid_log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid_log = [{"epoch": m["epoch"], "step": m["step"], "loss": round(m["loss"], 4), "exact_match": m["exact_match"]}
                 for m in valid_log if m.get("kind") == "valid"]
    scores = {}
    for split in ("valid", "test"):
        for beam in (1, 5):
            got = seqfit_json("evaluate", run, "--split", split, "--beam", beam)
            scores[f"{split}-beam{beam}"] = got
            echo(f"{split} beam {beam}: exact match {got['exact_match']:.2%}, BLEU {got['bleu']:.2f}, chrF {got['chrf']:.2f}")
    # per writing: greedy decodes of the test sources through `seqfit translate`, errors listed
    test = [json.loads(line) for line in paths["test"].read_text(encoding="utf-8").splitlines()]
    sources = root / "test-sources.txt"
    sources.write_text("".join(p["src"] + "\n" for p in test), encoding="utf-8")
    hyps = seqfit("translate", run, sources, "--beam", 1).stdout.split("\n")[:len(test)]
    by_format: dict[str, list[int]] = {}
    for p, h in zip(test, hyps):
        by_format.setdefault(p["format"], [0, 0])[0] += h == p["tgt"]
        by_format[p["format"]][1] += 1
    errors = [{"source": p["src"], "expected": p["tgt"], "got": h} for p, h in zip(test, hyps) if h != p["tgt"]]
    worst = sorted(by_format.items(), key=lambda kv: kv[1][0] / kv[1][1])[:5]
    rows = [{"split": k.split("-")[0], "decoding": "greedy" if k.endswith("beam1") else "beam 5",
             "exact_match": v["exact_match"], "bleu": v["bleu"], "chrf": v["chrf"], "pairs": v["count"],
             "loss": v["loss"]} for k, v in scores.items()]
    return {"name": "seq2seq-dates" + ("-quick" if quick else ""),
            "note": f"{len(info['formats'])} writings ({len(LOCALES)} Babel locales x 4 widths - en_US short, "
                    f"+ {len(HANDMADE)} hand-made), dates 1900-2099, disjoint days per split",
            "rows": rows,
            "summary": {"test_exact_match_greedy": scores["test-beam1"]["exact_match"],
                        "test_exact_match_beam5": scores["test-beam5"]["exact_match"],
                        "test_bleu_beam5": scores["test-beam5"]["bleu"], "test_chrf_beam5": scores["test-beam5"]["chrf"],
                        "train_seconds": round(train_s, 1),
                        "train_cpu_seconds": round(cpu1.children_user + cpu1.children_system
                                                   - cpu0.children_user - cpu0.children_system, 1),
                        "steps": summary["step"], "epochs": summary["epoch"], "parameters": summary["parameters"],
                        "tokens_per_s": summary["tokens_per_s"], "peak_anon_mb": summary["peak_anon"] / MB,
                        "peak_rss_mb": summary["peak_rss"] / MB, "translate_greedy_test_errors": len(errors)},
            "selection_on_valid": DATE_SELECTION, "validation_curve": valid_log, "test_errors": errors[:40],
            "worst_writings": {k: f"{a}/{n}" for k, (a, n) in worst},
            "data": {k: v for k, v in info.items() if k != "paths"} | {"sizes": QUICK_DATE_SIZES if quick else DATE_SIZES},
            "commands": [command_line(*prepare), command_line(*train),
                         command_line("evaluate", run, "--split", "test", "--beam", "1|5", "--json")]}


# ---------------------------------------------------------------------------------------------- entry points

def run(quick: bool = False, echo=print, parts: tuple[str, ...] = SECTIONS) -> dict:
    """Every section asked for (benchmarks/run.py calls this); each section's result is also written alone."""
    started = time.time()
    sections = {"dates": dates_section, "memory": memory_section, "planner": planner_section}
    results = {}
    for part in parts:
        result = sections[part](quick, echo)
        print_table(result)
        echo(f"-> {write_result(result)}")
        results[part] = result
    return {"name": "seq2seq" + ("-quick" if quick else ""), "sections": results,
            "summary": {f"{p}.{k}": v for p, r in results.items() for k, v in r.get("summary", {}).items()
                        if not isinstance(v, dict)} | {"seconds": round(time.time() - started, 1)}}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated ({', '.join(SECTIONS)})")
    args = parser.parse_args()
    parts = tuple(p for p in args.only.split(",") if p)
    if unknown := set(parts) - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    run(quick=args.quick, parts=parts)
