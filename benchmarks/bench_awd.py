"""Time to perplexity: the AWD-LSTM recipe against the classic one, under the same budget of CPU minutes (issue 19).

Word level: WikiText-2, training on test.txt and validating on valid.txt (the train split is not in
../shared/data). Character level: the King James Bible (1611, public domain), decoded from Debian's
bible-kjv packages when they are installed or in apt's cache, 5% of it held out by seqfit prepare's
--valid-fraction; without them, the Python reference's text in the standard library
(pydoc_data/topics.py; PSF licence, not public domain), and the result's "char_corpus" says which.

    classic   pytorch/examples word_language_model: 2-layer LSTM 200, embed 200, dropout 0.2, SGD lr 20,
              clip 0.25, bptt 35, batch 20, lr /4 whenever validation does not improve (--schedule plateau)
    awd       examples/awd-lstm-small.toml: tied 2 x 256 LSTM, weight drop, locked and embedding dropout,
              AR/TAR, variable BPTT around 70, batch 20, Adam lr 0.003, weight averaging from the first stalled
              validation (--average nt, --nonmono 1)

The two recipes of a row pair run at the same time, as two children with one thread each
(OMP_NUM_THREADS=1, torch.set_num_threads(1)), so each gets one of the 2 cores, and each stops after
--max-cpu-minutes: the CPU time of its whole process, validation included, so a machine that other jobs
load slows the wall clock but not the work a budget buys. The budgets of a corpus are one run: it stops at
10 CPU minutes (a checkpoint), is scored, and resumes bit-exactly (--resume) for 20 more, so the 30-minute row
is the run a 30-minute budget would have made, with the 10-minute row on its way -- except for a recipe whose
schedule ends with its budget (cosine over --max-cpu-minutes), which runs each budget as a run of its own. Both recipes validate after
every epoch on the first EVAL_TOKENS tokens of the valid split (that is what the plateau schedule and NT-ASGD's
trigger read; a full pass over the 217k valid tokens each epoch would take a quarter of the AWD run's budget), and
after the budget `seqfit evaluate` scores the whole valid split, outside the budget: for AWD with the
averaged weights once NT-ASGD has started, as the run's model file holds them.

    valid_ppl      perplexity on the whole valid split after the budget (10 streams, each from a zero state)
    subset_ppl     the last in-run validation (first EVAL_TOKENS tokens); best_subset_ppl the best of them
    tokens_per_s   seqfit's mean over logging windows, wall clock, training only; cpu_util = CPU s / wall s
                   of the training (1.0: it had its core to itself)
    tokens_per_cpu_s  tokens trained / the budget's CPU seconds (validation inside the budget included): what a
                   CPU minute buys, whatever the machine's load; tokens trained = steps x batch x the mean
                   window (bptt; under --variable-bptt the rule's mean, about 0.95 bptt)
    peak_train_MiB the training loop's sampled peak RSS; ru_maxrss_MiB the child's, evaluation included
    averaged_from  step at which NT-ASGD started averaging (None: never triggered)

bf16 rows run only where oneDNN has bf16 recurrent kernels (AVX-512); elsewhere they are listed as
skipped with the reason (seqfit.nn.precision.cpu_bf16_rnn_supported).

    python benchmarks/bench_awd.py [--quick] [--pairs 2]   # JSON: benchmarks/results/awd.json (awd-quick.json)
    python benchmarks/bench_awd.py --collect   # the result again from the children's files in benchmarks/work/awd
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CALL_CLI, WORK, print_table, seqfit_command, wikitext, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
AWD_RECIPE = REPO / "examples" / "awd-lstm-small.toml"
COMMON = ["--device", "cpu", "--seed", "1111", "--epochs", "1000", "--checkpoint-every", "0", "--log-every", "20"]
RECIPES = {
    "classic": ["--cell", "lstm", "--layers", "2", "--hidden", "200", "--embed", "200", "--dropout", "0.2",
                "--optimizer", "sgd", "--lr", "20", "--clip", "0.25", "--bptt", "35", "--batch-size", "20",
                "--schedule", "plateau"],
    "awd": ["--config", str(AWD_RECIPE)],
}
WORD_BUDGETS, CHAR_BUDGETS = (10.0, 30.0), (10.0,)  # CPU minutes
QUICK_WORD_BUDGETS, QUICK_CHAR_BUDGETS = (0.25, 0.5), (0.25,)
EVAL_TOKENS = 50_000  # in-run validation: the first EVAL_TOKENS tokens of the valid split (10 streams)
EVAL_STREAMS = 10
# Pairs run at a time: 1 gives each child a core of its own on 2 cores; more finish sooner on a machine that
# other jobs load anyway (the CPU-time budgets hold either way; cpu_util shows what each child got).
PAIRS_AT_ONCE = int(os.environ.get("SEQFIT_BENCH_AWD_PAIRS", "1"))
KJV_RANGE = "Gen1:1-Rev22:21"  # bible(1): the whole text

# One child per recipe and corpus: trains for the first budget, scores the whole valid split, then resumes
# (bit-exactly, from the checkpoint the budget's stop wrote) for the next budget's remaining CPU minutes.
CHILD = """
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
""" + CALL_CLI + """
run_dir, full_eval, legs, train_args = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], sys.argv[4:]
resumed = legs.startswith("+")  # "+8": every leg continues the run already in run_dir
out = []
for i, leg in enumerate(legs.lstrip("+").split(",")):
    wall, cpu = time.perf_counter(), time.process_time()
    summary = json.loads(call(train_args + ["--max-cpu-minutes", leg, "--json"] + (["--resume"] if i or resumed else [])))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    full = json.loads(call(["evaluate", str(run_dir), "--split", "valid", "--json"])) if full_eval else None
    out.append({"summary": summary, "train_wall_s": wall, "train_cpu_s": cpu, "full": full,
                "metrics": (run_dir / "metrics.jsonl").read_text(),
                "state": json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"],
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
    Path(f"{run_dir}{'.resumed' if resumed else ''}.legs.json").write_text(json.dumps(out))  # what a stopped benchmark still has
print(json.dumps(out))
"""


def _bf16_supported() -> bool:
    from seqfit.nn.precision import cpu_bf16_rnn_supported

    return cpu_bf16_rnn_supported()


def _kjv(work: Path) -> Path | None:
    """The King James Bible as plain text, one verse a line, a blank line between chapters; None without it.

    From Debian's bible-kjv (the `bible` reader) and bible-kjv-text (its compressed data): installed, or
    their .deb files in apt's cache, unpacked under ``work`` (nothing is installed)."""
    out = work / "kjv.txt"
    if out.is_file():
        return out
    reader, data_dir = shutil.which("bible"), Path("/usr/lib")
    if not (reader and (data_dir / "bible.data").is_file()):
        cache = Path("/var/cache/apt/archives")
        debs = [sorted(cache.glob(f"{name}_*.deb")) for name in ("bible-kjv", "bible-kjv-text")]
        if not all(debs) or not shutil.which("dpkg-deb"):
            return None
        unpacked = work / "kjv-debs"
        for found in debs:
            subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(unpacked)], check=True)
        reader, data_dir = str(unpacked / "usr" / "bin" / "bible"), unpacked / "usr" / "lib"
    text = subprocess.run([reader, "-p", str(data_dir), KJV_RANGE], check=True, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}).stdout
    verses: list[str] = []
    previous = ""
    for line in text.splitlines():  # "", "Genesis 1", "", "  1 In the beginning ...", wrapped lines at column 0
        if line.startswith(" ") and line.strip():
            verses.append(line.split(maxsplit=1)[1])  # a verse, its number dropped
        elif line and previous:
            verses[-1] += " " + line.strip()  # a verse's continuation
        elif line and verses:
            verses.append("")  # a chapter heading (after a blank line): a blank line between chapters
        previous = line
    out.write_text("\n".join(verses) + "\n", encoding="utf-8")
    return out


def _char_corpus(work: Path) -> tuple[Path, str]:
    kjv = _kjv(work)
    if kjv is not None:
        return kjv, "King James Bible (1611, public domain), from Debian's bible-kjv packages"
    topics = Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"
    return topics, "Python reference text, stdlib pydoc_data/topics.py (PSF licence; no public-domain prose found)"


def _start(recipe: list[str], data: Path, run_dir: Path, *, precision: str, budgets: tuple[float, ...],
           eval_batches: int, full_eval: bool) -> tuple[subprocess.Popen, Path]:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    legs = ",".join(f"{b - a:g}" for a, b in zip((0.0, *budgets), budgets))  # 10, 30 -> "10,20"
    args = ["train", str(data), "--out", str(run_dir), *recipe, *COMMON, "--precision", precision,
            "--eval-batches", str(eval_batches)]
    log = run_dir.parent / f"{run_dir.name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), "1" if full_eval else "0", legs, *args],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
    return proc, log


def _train_setting(args: list[str] | None, key: str):
    """A recipe's [train] setting: its flag, else its --config TOML, else seqfit's default."""
    from seqfit.config import TrainCfg

    default, args = getattr(TrainCfg(), key), args or []
    flag = "--" + key.replace("_", "-")
    if flag in args:
        return True if isinstance(default, bool) else type(default)(args[args.index(flag) + 1])
    if "--config" in args:
        return tomllib.loads(Path(args[args.index("--config") + 1]).read_text())["train"].get(key, default)
    return default


def _bptt(args: list[str]) -> int:
    return _train_setting(args, "bptt")


def _spans_budget(args: list[str]) -> bool:
    """Whether the recipe's schedule ends with its budget (cosine over --max-cpu-minutes): then each budget is
    a run of its own, since a 10-minute run's lr is not the 30-minute run's at minute 10."""
    return _train_setting(args, "schedule") == "cosine"


def _children(recipes: dict[str, list[str]], budgets: tuple[float, ...]) -> list[tuple[str, tuple[float, ...], str]]:
    """(recipe, its budgets, run name suffix) per child: one run through every budget, or one run per budget."""
    out = []
    for recipe, args in recipes.items():
        if _spans_budget(args):
            out += [(recipe, (b,), f"-{b:g}min") for b in budgets]
        else:
            out.append((recipe, budgets, ""))
    return out


def _start_pair(corpus: str, data: Path, work: Path, *, precision: str, budgets: tuple[float, ...], full_eval: bool,
                recipes: dict[str, list[str]] = RECIPES) -> dict:
    """The recipes at once, one thread each: [(recipe, budgets, run_dir, process, log)]."""
    started = []
    for recipe, own, suffix in _children(recipes, budgets):
        args = recipes[recipe]
        run_dir = work / f"{corpus}-{recipe}-{precision}{suffix}"
        started.append((recipe, own, run_dir, *_start(args, data, run_dir, precision=precision, budgets=own,
                                                      eval_batches=max(1, EVAL_TOKENS // (EVAL_STREAMS * _bptt(args))),
                                                      full_eval=full_eval)))
    return {"corpus": corpus, "precision": precision, "budgets": budgets, "started": started}


def _finish_pair(pair: dict) -> list[dict]:
    """A row per recipe and budget, once every child is done."""
    rows = []
    for recipe, budgets, run_dir, proc, log in pair["started"]:
        out, _ = proc.communicate(timeout=max(pair["budgets"]) * 60 * 8 + 1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{recipe} ({pair['corpus']}) failed:\n{log.read_text()[-3000:]}")
        for budget, leg in zip(budgets, json.loads(out.strip().splitlines()[-1])):
            rows.append(_row(pair["corpus"], recipe, pair["precision"], budget, leg, log))
    return rows


def _row(corpus: str, recipe: str, precision: str, budget: float, leg: dict, log: Path) -> dict:
    summary = leg["summary"]
    records = [json.loads(line) for line in leg["metrics"].splitlines() if line.strip()]
    valid = [r for r in records if r.get("kind") == "valid"]
    train = [r for r in records if r.get("kind") == "train"]
    state = _plain(leg["state"])
    count = (state.get("weight_average") or {}).get("count", 0)
    mib = 1 / 2**20
    util = leg["train_cpu_s"] / leg["train_wall_s"]
    plan = summary["plan"]
    tokens = summary["step"] * plan["batch_size"] * _mean_window(plan["bptt"], _variable_bptt(RECIPES.get(recipe)))
    return {"corpus": corpus, "recipe": recipe, "precision": precision, "budget_cpu_min": budget,
            "valid_ppl": leg["full"]["ppl"] if leg["full"] else summary["valid_ppl"],
            "subset_ppl": summary["valid_ppl"], "best_subset_ppl": min((r["ppl"] for r in valid), default=None),
            "steps": summary["step"], "epochs": summary["epoch"],
            "averaged_from": summary["step"] - count + 1 if count else None,
            "final_lr": train[-1]["lr"] if train else None,
            "tokens_per_s": summary["tokens_per_s"], "cpu_util": util,
            "tokens_per_cpu_s": tokens / (budget * 60), "tokens_trained": round(tokens),
            "train_cpu_s": leg["train_cpu_s"], "train_wall_s": leg["train_wall_s"],
            "peak_train_MiB": summary["peak_rss"] * mib, "ru_maxrss_MiB": leg["ru_maxrss"] * mib,
            "parameters": summary["parameters"],
            "curve": [(r["step"], r["epoch"], round(r["ppl"], 2)) for r in valid]}


def _variable_bptt(args: list[str] | None) -> bool:
    return _train_setting(args, "variable_bptt")


def _mean_window(bptt: int, variable: bool) -> float:
    """Mean window length: bptt, or under --variable-bptt the mean of data/batching.py's random_windows rule
    (bptt, or bptt / 2 one time in twenty, plus normal noise of sd 5; at least 5, at most bptt)."""
    if not variable:
        return float(bptt)
    rng = np.random.default_rng(0)
    base = np.where(rng.random(200_000) < 0.95, bptt, bptt / 2)
    return float(np.clip(np.round(rng.normal(base, 5)), 5, bptt).mean())


def _plain(obj):
    """A checkpoint's state.json ({"__dict__": [[key, value], ...]} for mappings) as plain dicts."""
    if isinstance(obj, dict):
        if set(obj) == {"__dict__"}:
            return {k: _plain(v) for k, v in obj["__dict__"]}
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


SKIPPED_BF16 = ("skipped: this CPU has no bf16 recurrent kernels (oneDNN's bf16 LSTM needs AVX-512; "
                "seqfit.nn.precision.cpu_bf16_rnn_supported)")


def run(quick: bool = False, pairs_at_once: int = PAIRS_AT_ONCE, collect: bool = False) -> dict:
    """Run the benchmark; ``collect``: rebuild the result from the files an earlier run's children left in
    WORK/awd (each writes RUN.legs.json after every budget), without training anything."""
    name = "awd-quick" if quick else "awd"
    wiki = wikitext()
    if wiki is None:
        return {"name": name, "note": "skipped: ../shared/data/wikitext-2 not found", "rows": []}
    work = WORK / "awd"
    word, char = work / "data-word", work / "data-char"
    if not collect:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        seqfit_command("prepare", "--train", str(wiki / "test.txt"), "--valid", str(wiki / "valid.txt"), "--out", str(word))
        seqfit_command("prepare", str(_char_corpus(work)[0]), "--level", "char", "--valid-fraction", "0.05", "--out", str(char))
    bf16 = _bf16_supported()
    word_budgets, char_budgets = (QUICK_WORD_BUDGETS, QUICK_CHAR_BUDGETS) if quick else (WORD_BUDGETS, CHAR_BUDGETS)
    jobs, rows = [], []
    for corpus, data, budgets, precisions in (("wikitext-2", word, word_budgets, ("fp32", "bf16")),
                                               ("char", char, char_budgets, ("fp32",))):
        for precision in precisions:
            if precision == "bf16" and not bf16:
                rows += [{"corpus": corpus, "recipe": recipe, "precision": precision, "budget_cpu_min": budget,
                          "status": SKIPPED_BF16} for budget in budgets for recipe in RECIPES]
            else:
                jobs.append((corpus, data, precision, budgets))
    if collect:
        for corpus, _, precision, budgets in jobs:
            for recipe, own, suffix in _children(RECIPES, budgets):
                legs = json.loads(Path(f"{work / f'{corpus}-{recipe}-{precision}{suffix}'}.legs.json").read_text())
                rows += [_row(corpus, recipe, precision, b, leg, None) for b, leg in zip(own, legs)]
    for i in range(0, len(jobs) if not collect else 0, pairs_at_once):  # pairs_at_once pairs (2 children each)
        t0 = time.perf_counter()
        started = [_start_pair(corpus, data, work, precision=precision, budgets=budgets, full_eval=not quick)
                   for corpus, data, precision, budgets in jobs[i:i + pairs_at_once]]
        for pair in started:
            done = _finish_pair(pair)
            for row in done:
                print(_describe(row), flush=True)
            rows += done
        print(f"  ({time.perf_counter() - t0:.0f} s wall)", flush=True)
    rows.sort(key=lambda r: (r["corpus"] != "wikitext-2", r["precision"], r["budget_cpu_min"], r["recipe"]))
    meta = {c: json.loads((d / "meta.json").read_text()) for c, d in (("wikitext-2", word), ("char", char))}
    result = {"name": name, "rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
              "curves": {f"{r['corpus']} {r['recipe']} {r['precision']} {r['budget_cpu_min']:g}": r["curve"]
                         for r in rows if "curve" in r},
              "char_corpus": _char_corpus(work)[1], "eval_tokens_in_run": EVAL_TOKENS,
              "corpora": {c: {k: m.get(k) for k in ("vocab_size", "splits")} for c, m in meta.items()},
              "recipes": {k: " ".join(v) for k, v in RECIPES.items()}, "awd_recipe": AWD_RECIPE.read_text(),
              "threads_per_run": 1, "pairs_at_once": pairs_at_once, "summary": _summary(rows)}
    if quick:
        result["note"] = "quick: budgets of seconds, in-run validation subset only; not the benchmark's figures"
    return result


def _summary(rows: list[dict]) -> dict:
    out = {}
    done = {(r["corpus"], r["precision"], r["budget_cpu_min"], r["recipe"]): r for r in rows if "valid_ppl" in r}
    for (corpus, precision, budget, recipe), awd in done.items():
        classic = done.get((corpus, precision, budget, "classic"))
        if recipe != "awd" or classic is None:
            continue
        key = f"{corpus} {precision} {budget:g} CPU-min awd/classic"
        out[f"{key} ppl"] = awd["valid_ppl"] / classic["valid_ppl"]
        out[f"{key} tokens/s"] = awd["tokens_per_s"] / classic["tokens_per_s"]
        out[f"{key} tokens/CPU-s"] = awd["tokens_per_cpu_s"] / classic["tokens_per_cpu_s"]
        out[f"{key} peak memory"] = awd["peak_train_MiB"] / classic["peak_train_MiB"]
    longest = max((b for (c, p, b, _) in done if c == "wikitext-2" and p == "fp32"), default=None)
    if longest is not None and f"wikitext-2 fp32 {longest:g} CPU-min awd/classic ppl" in out:
        ratio = out[f"wikitext-2 fp32 {longest:g} CPU-min awd/classic ppl"]
        out[f"AWD clearly below classic at {longest:g} CPU-min (ppl ratio <= 0.9)"] = bool(ratio <= 0.9)
    return out


def _describe(r: dict) -> str:
    avg = f", averaging from step {r['averaged_from']}" if r["averaged_from"] else ""
    return (f"{r['corpus']} {r['recipe']:>7} {r['precision']} {r['budget_cpu_min']:g} CPU-min: valid ppl "
            f"{r['valid_ppl']:.1f} (subset {r['subset_ppl']:.1f}, best {r['best_subset_ppl']:.1f}), "
            f"{r['steps']} steps / {r['epochs']} epochs{avg}, {r['tokens_per_s']:,.0f} tok/s "
            f"(cpu util {r['cpu_util']:.2f}; {r['tokens_per_cpu_s']:,.0f} tok/CPU-s), peak {r['peak_train_MiB']:,.0f} MiB")


if __name__ == "__main__":
    args = sys.argv[1:]
    result = run(quick="--quick" in args, collect="--collect" in args,
                 pairs_at_once=int(args[args.index("--pairs") + 1]) if "--pairs" in args else PAIRS_AT_ONCE)
    print_table(result)
    print(f"-> {write_result(result)}")
