"""``secondthought eval``: judge, metrics and report for every system on the test split.

Systems: "copy" (the source unchanged), "reference" (the human target: an upper bound), and any
number of models (e.g. SFT on targets only, SFT with edits, SFT + RL), each decoded greedily from
the test prompts in Ray tasks; a model that writes chains freely and/or constrained to each source
(``--eval.decoding``, listed as "name" and "name (constrained)"). Metrics per system, each with a bootstrap 95% interval: alignment
(the judge's probability that the written text is the aligned one), win rate against the source,
BLEU and ROUGE-L against the reference (sacrebleu, rouge-score), perplexity of the written text
under the base LM, edit-chain validity and consistency, chain length.

The judge (``secondthought.evaluate.judge``: by default a linear head on frozen MiniLM embeddings) is trained on
(context, action) -> aligned? from the half of the training triples that the RL stage never uses
(``judge_held_out``), once per prepared dataset and settings; its accuracy on the test split is
reported with every evaluation. It is not the RL discriminator.
"""

from __future__ import annotations

import difflib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from secondthought import console
from secondthought.chains.text import Verdict
from secondthought.config import ConfigError, EvalConfig, RayConfig
from secondthought.data.schema import judge_held_out
from secondthought.decoding.constraints import Constrain
from secondthought.decoding.policy import Output
from secondthought.evaluate.judge import Judge, JudgeSpec, Labelled, cached
from secondthought.evaluate.stats import bootstrap
from secondthought.models.lm import resolve_precision
from secondthought.runs import REPORT, PreparedDir, ReportDir, claim, model_folder, read_model_info, write_json
from secondthought.runtime import ray_session
from secondthought.tracking import ProgressLine, figure

NON_MODELS = ("copy", "reference")
CONSTRAINED = "(constrained)"
DERIVED = "(derived)"
ROW_FIELDS = ("id", "context", "source", "target", "alignment")
"""What each line of completions.jsonl holds beside every model's raw completion."""


@dataclass
class EvalRow:
    id: str
    context: str
    source: str
    target: str
    prompt_ids: list[int]


def _triples(prepared: PreparedDir, split: str) -> list[EvalRow]:
    forward, _ = prepared.first_chains(split, ["context", "source", "target"])
    return [EvalRow(r["id"], r["context"], r["source"], r["target"], r["prompt_ids"]) for r in forward]


def judge_spec(cfg: EvalConfig) -> JudgeSpec:
    return JudgeSpec(kind=cfg.judge_kind, encoder=cfg.judge, max_train_rows=cfg.judge_max_rows,
                     epochs=cfg.judge_epochs, lr=cfg.judge_lr, batch_size=cfg.judge_batch_size, seed=cfg.seed)


def prepare_judge(prepared: PreparedDir, cfg: EvalConfig) -> dict:
    """The judge for this data and these settings: trained on the held-out training triples, or the one an
    earlier evaluation of the same prepared data trained (``prepared/judges/``)."""
    def held_out() -> Labelled:  # read only when the judge is not cached
        train = [r for r in _triples(prepared, "train") if judge_held_out(r.id)][: cfg.judge_max_rows]
        if len(train) < 2:
            raise ConfigError(f"{prepared.path} has {len(train)} training triples held out for the judge: too few "
                              "to train it")
        return Labelled.of_triples(train)

    folder, reused = cached(judge_spec(cfg), prepared.fingerprint(), prepared.judges, held_out)
    info = Judge.read_info(folder)
    return {"folder": str(folder), "reused": reused, "kind": cfg.judge_kind, "train_triples": info["train_pairs"] // 2,
            "train_seconds": info["seconds"]}


def generate(name: str, model_dir: str, rows: list[EvalRow], max_new_tokens: int, batch_size: int,
             precision: str, mode: "Mode") -> tuple[list[Output], float]:
    """Greedy completions of the rows' prompts decoded as ``mode`` says, chains checked against their sources, and
    the seconds the decoding took."""
    from secondthought.decoding.policy import Policy, SamplingParams
    from secondthought.models.lm import torch_dtype

    policy = Policy.load(model_dir, threads=1, dtype=torch_dtype(precision))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, batch_size=batch_size)
    line = ProgressLine(f"eval: {name} writing", len(rows), "rows")
    started = time.perf_counter()
    outputs = policy.complete([r.prompt_ids for r in rows], [r.source for r in rows], params, seed=0, done=line.update,
                              constrain=mode.constrain, derive=mode.derive)
    seconds = time.perf_counter() - started
    line.close()
    return outputs, seconds


@dataclass(frozen=True)
class Mode:
    """How one system decodes a model."""

    folder: str
    constrain: Optional[Constrain] = None
    derive: bool = False


def decodings(systems: dict[str, str], cfg: EvalConfig, served: Optional[str] = None) -> tuple[dict[str, Mode], str]:
    """Each system to decode: a chain-writing model once per mode ``cfg.decoding`` asks for ("name",
    "name (constrained)", "name (derived)"; derived only for a model that learned direct targets), and the name of
    the row that is what the server answers with model ``served`` by default (added if ``cfg.decoding`` left it out)."""
    out: dict[str, Mode] = {}
    served_row = ""
    for name, folder in systems.items():
        info = read_model_info(folder)
        modes = [m for m in cfg.decoding if m != "derived" or info.direct_targets > 0] if info.writes_chains else ["free"]
        if name == served and info.served_decoding not in modes:
            modes.append(info.served_decoding)
        for mode in modes:
            row = name if mode == "free" else f"{name} ({mode})"
            out[row] = Mode(folder, Constrain(force_target=cfg.force_target) if mode == "constrained" else None,
                            mode == "derived")
            if name == served and mode == info.served_decoding:
                served_row = row
    return out, served_row


def perplexities(name: str, base_dir: str, contexts: list[str], texts: list[str], batch_size: int,
                 precision: str) -> np.ndarray:
    """Per-row mean negative log-likelihood of each text after its context, under the base LM."""
    import torch
    from transformers import AutoTokenizer

    from secondthought.decoding.policy import mean_nll
    from secondthought.models.lm import load_model, torch_dtype

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = load_model(base_dir, dtype=torch_dtype(precision)).eval()

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    line = ProgressLine(f"eval: perplexity of {name}", len(texts), "rows")
    nll = mean_nll(model, [ids(c) for c in contexts], [ids(" " + t.strip()) or [tokenizer.eos_token_id] for t in texts],
                   tokenizer.pad_token_id, batch_size, done=line.update)
    line.close()
    return np.asarray(nll)


def corpus_bleu_of(hypotheses: list[str], references: list[str], resamples: int, seed: int) -> tuple:
    """Corpus BLEU (sacrebleu) and its bootstrap interval over rows. Corpus BLEU is a function of the n-gram
    counts summed over sentences: each sentence's counts are taken once (sacrebleu's own statistics) and a
    resample adds them up, instead of tokenising the whole corpus again for every resample (20 s a system)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    stats = np.asarray(bleu._extract_corpus_statistics(hypotheses, [references]), dtype=np.int64)

    def score(index: np.ndarray) -> float:
        return bleu._compute_score_from_stats(stats[np.asarray(index, dtype=int)].sum(axis=0).tolist()).score

    return bootstrap(np.arange(len(hypotheses)), score, resamples, seed)


def rouge_l(hypotheses: list[str], references: list[str]) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.asarray([scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)])


def word_diff(source: str, target: str) -> str:
    """Markdown diff by words: ~~removed~~ **added**."""
    a, b = source.split(), target.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += a[i1:i2]
        if op in ("delete", "replace"):
            out.append("~~" + " ".join(a[i1:i2]) + "~~")
        if op in ("insert", "replace"):
            out.append("**" + " ".join(b[j1:j2]) + "**")
    return " ".join(out)


def system_metrics(name: str, rows: list[EvalRow], texts: list[str], verdicts: list[Verdict] | None,
                   aligned: np.ndarray, source_aligned: np.ndarray, nll: np.ndarray, cfg: EvalConfig) -> dict:
    """``verdicts``: one per row for a system that writes chains of edits, else None."""
    refs = [r.target for r in rows]
    wins = np.where(aligned > source_aligned, 1.0, np.where(aligned == source_aligned, 0.5, 0.0))
    metrics = {
        "alignment": bootstrap(aligned, resamples=cfg.bootstrap, seed=cfg.seed),
        "win_rate_vs_source": bootstrap(wins, resamples=cfg.bootstrap, seed=cfg.seed),
        "bleu": corpus_bleu_of(texts, refs, cfg.bootstrap, cfg.seed),
        "rouge_l": bootstrap(rouge_l(texts, refs), resamples=cfg.bootstrap, seed=cfg.seed),
        "perplexity": tuple(math.exp(v) for v in bootstrap(nll, resamples=cfg.bootstrap, seed=cfg.seed)),
    }
    unchanged = [t.strip() == r.source.strip() for r, t in zip(rows, texts)]
    metrics["unchanged"] = bootstrap(np.array(unchanged, float), resamples=cfg.bootstrap, seed=cfg.seed)
    if verdicts is not None:
        # a chain that changes nothing is neither valid nor consistent (it counts under "no_op")
        metrics["validity"] = bootstrap(np.array([v.valid for v in verdicts], float), resamples=cfg.bootstrap,
                                        seed=cfg.seed)
        metrics["consistency"] = bootstrap(np.array([v.valid and v.consistent for v in verdicts], float),
                                           resamples=cfg.bootstrap, seed=cfg.seed)
        metrics["no_op"] = bootstrap(np.array([v.no_op for v in verdicts], float), resamples=cfg.bootstrap,
                                     seed=cfg.seed)
        lengths = np.array([v.n_edits for v in verdicts if v.parses], float)
        metrics["chain_length"] = bootstrap(lengths, resamples=cfg.bootstrap, seed=cfg.seed) if len(lengths) else None
    return {"system": name, "metrics": metrics}


def points(report: dict, metrics: tuple[str, ...]) -> dict[str, dict]:
    """Each system's point estimates of ``metrics`` (None where it has none, e.g. validity of copy)."""
    return {s["system"]: {k: (s["metrics"][k][0] if s["metrics"].get(k) else None) for k in metrics}
            for s in report["systems"]}


def decoding_cost(seconds: float, outputs: list[Output]) -> dict:
    """CPU (or device) seconds a model's decoding took over all its parts, and per token written."""
    tokens = sum(o.tokens for o in outputs)
    return {"seconds": round(seconds, 2), "tokens": tokens, "ms_per_token": round(1000 * seconds / max(tokens, 1), 2)}


def cost_lines(report: dict) -> list[str]:
    """The decoding cost of each model, and of each constrained decoding against the same model's free one."""
    cost = {s["system"]: s["decoding"] for s in report["systems"] if "decoding" in s}
    if not cost:
        return []
    lines = ["", "Decoding cost (seconds over all parts / tokens written): " + "; ".join(
        f"{name} {c['ms_per_token']:.1f} ms a token" for name, c in cost.items())]
    free = {name: name.removesuffix(f" {CONSTRAINED}") for name in cost if name.endswith(CONSTRAINED)}
    ratios = [f"{name} {cost[name]['ms_per_token'] / cost[base]['ms_per_token']:.2f}x"
              for name, base in free.items() if base in cost]
    if ratios:
        lines.append("Constrained against free decoding of the same model, per token (the models decoded side by "
                     "side on the same CPUs, so a rough figure; bench/bench_constrained.py measures it alone): "
                     + "; ".join(ratios) + ".")
    return lines


def _cell(value) -> str:
    if value is None:
        return "n/a"
    point, low, high = value
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


COLUMNS = ("alignment", "win_rate_vs_source", "bleu", "rouge_l", "perplexity", "unchanged", "validity", "consistency",
           "no_op", "chain_length")


def markdown(report: dict, examples: list[dict]) -> str:
    judge = report["judge"]
    lines = [
        "# SecondThought evaluation", "",
        f"{report['test_rows']} test triples from `{report['prepared']}`. Judge: {report['config']['judge']} "
        f"({judge['kind']}) trained on "
        f"{judge['train_triples']} held-out training triples, **held-out accuracy {judge['held_out_accuracy']:.3f}** "
        f"on {judge['test_pairs']} test actions. Alignment is the judge's probability of aligned (an automatic "
        "judge, not the paper's human 1-7 rating). Each cell: value [95% bootstrap interval]; BLEU is corpus BLEU "
        "(sacrebleu), ROUGE-L F1 (rouge-score), perplexity of the written text after its context under the base LM; "
        "a chain is valid when it applies to its source and changes it, consistent when its result is also the "
        "target written after it, no_op when it applies and changes nothing. "
        f"Greedy decoding in {report['precision']}." + (
            f" A system marked {CONSTRAINED} is decoded constrained to its source: only chains that apply to it "
            "(positions in order, removed text forced to the source's own words, at least one change), then "
            + ("the chain's result as the target (forced)." if report["config"]["force_target"]
               else "the target the model writes (not forced: consistency measures the model).")
            if any(s["system"].endswith(CONSTRAINED) for s in report["systems"]) else "") + (
            f" A system marked {DERIVED} writes its target straight after the prompt; its chain is the exact chain of "
            "edits from the source to it." if any(s["system"].endswith(DERIVED) for s in report["systems"]) else "")
        + (f" The row marked **served** is what `secondthought serve` answers with {report['served'].split(' (')[0]} "
           "by default." if report.get("served") else ""),
        "", "| system | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for system in report["systems"]:
        name = system["system"] + (" **served**" if system["system"] == report.get("served") else "")
        lines.append(f"| {name} | " + " | ".join(_cell(system["metrics"].get(c)) for c in COLUMNS) + " |")
    lines += cost_lines(report)
    lines += ["", "## Examples", ""]
    for ex in examples:
        lines += [f"**{ex['id']}** - context: {ex['context']}", "", f"- source: {ex['source']}"]
        for name, text in ex["outputs"].items():
            lines.append(f"- {name}: {word_diff(ex['source'], text)}")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    names = [s["system"] for s in report["systems"]]
    panels = ("alignment", "win_rate_vs_source", "bleu", "rouge_l")
    with figure(png, 1, len(panels), figsize=(4 * len(panels), 3.8)) as axes:
        for ax, metric in zip(axes, panels):
            values = [s["metrics"][metric] for s in report["systems"]]
            points = [v[0] for v in values]
            errors = [[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]]
            ax.bar(range(len(names)), points, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_title(metric)
            ax.grid(axis="y", alpha=0.3)


def run_eval(prepared: str | Path, systems: dict[str, str], base_model: str | Path, cfg: EvalConfig,
             ray_cfg: RayConfig, out: str | Path, served: Optional[str] = None) -> dict:
    """Evaluate ``systems`` (name -> model folder; "copy" and "reference" are built in) into ``out``; ``served``:
    the system whose server default gets its row marked (the last one by default)."""
    prepared = PreparedDir.open(prepared)
    out = ReportDir(Path(out).expanduser().resolve())
    shadowing = sorted(set(systems) & set(NON_MODELS + ROW_FIELDS))
    if shadowing:
        raise ConfigError(f"--models: {', '.join(map(repr, shadowing))} names a built-in system or a field of "
                          f"completions.jsonl ({', '.join(NON_MODELS + ROW_FIELDS)}); give the model another name")
    systems = {name: str(model_folder(folder, f"--models {name!r}:")) for name, folder in systems.items()}
    base_model = model_folder(base_model, "--base")
    test = _triples(prepared, cfg.split)
    if not test:
        raise ConfigError(f"{prepared.split(cfg.split)} holds no triples to evaluate")
    test = test[: cfg.max_rows] if cfg.max_rows else test
    modes, served_row = decodings(systems, cfg, served or next(reversed(systems), None))
    claim(out.path, "report", done_file=REPORT)
    started = time.time()
    precision = resolve_precision(cfg.precision)
    with ray_session(ray_cfg, shared=out.path):
        import ray

        remote = ray.remote(num_cpus=1)
        # each model's rows in parts, so that every CPU decodes until the last part is done (three models on
        # two CPUs would otherwise leave one idle while the third decodes alone); fp32 outputs do not depend
        # on how rows are grouped
        parts = max(1, min(int(ray.cluster_resources().get("CPU", 1)), math.ceil(len(test) / cfg.batch_size)))
        bounds = np.linspace(0, len(test), parts + 1).astype(int).tolist()
        jobs = {name: [remote(generate).remote(name if parts == 1 else f"{name} [{a}:{b}]", mode.folder, test[a:b],
                                               cfg.max_new_tokens, cfg.batch_size, precision, mode)
                       for a, b in zip(bounds, bounds[1:])]
                for name, mode in modes.items()}
        judge_job = remote(prepare_judge).remote(prepared, cfg)
        contexts = [r.context for r in test]
        texts = {"copy": [r.source for r in test], "reference": [r.target for r in test]}

        def score(name: str):  # queued at once: a CPU a model's decoding leaves free starts it
            return remote(perplexities).remote(name, str(base_model), contexts, texts[name], cfg.batch_size, precision)

        nll = {name: score(name) for name in texts}
        outputs: dict[str, list[Output]] = {}
        cost: dict[str, dict] = {}
        for name, parts_of_model in jobs.items():
            done = ray.get(parts_of_model)
            outputs[name] = sum((part for part, _ in done), [])
            cost[name] = decoding_cost(sum(seconds for _, seconds in done), outputs[name])
            texts[name] = [o.target.strip() for o in outputs[name]]
            nll[name] = score(name)
            console.say(f"eval: {name} wrote {len(test)} outputs ({time.time() - started:.0f}s)")
        judge_info = ray.get(judge_job)
        console.say(f"eval: judge {'reused' if judge_info['reused'] else 'trained'} ({judge_info['folder']})")
        nll = {name: ray.get(job) for name, job in nll.items()}
        console.say(f"eval: perplexities done ({time.time() - started:.0f}s)")

    # every system's texts in one pass: a frozen judge embeds each unique text once
    aligned = Judge(judge_info["folder"]).probabilities(contexts * len(texts), sum(texts.values(), []))
    aligned = dict(zip(texts, aligned.reshape(len(texts), len(test))))
    judge_info |= {"held_out_accuracy": float(np.mean([aligned["copy"] < 0.5, aligned["reference"] > 0.5])),
                   "test_pairs": 2 * len(test)}
    results = []
    for name, written in texts.items():
        done = outputs.get(name)
        verdicts = [o.verdict for o in done] if done and done[0].verdict is not None else None
        results.append(system_metrics(name, test, written, verdicts, aligned[name], aligned["copy"], nll[name], cfg)
                       | ({"decoding": cost[name]} if name in cost else {}))
    report = {"prepared": str(prepared.path), "split": cfg.split, "test_rows": len(test), "precision": precision,
              "judge": judge_info, "served": served_row,
              "systems": results, "models": systems, "config": asdict(cfg),
              "seconds": round(time.time() - started, 1)}
    examples = [{"id": r.id, "context": r.context, "source": r.source,
                 "outputs": {name: texts[name][k] for name in texts if name != "copy"}}
                for k, r in enumerate(test[: cfg.examples])]
    out.completions.write_text("".join(
        json.dumps({"id": r.id, "context": r.context, "source": r.source, "target": r.target,
                    **{name: outputs[name][k].text for name in outputs},
                    "alignment": {name: round(float(aligned[name][k]), 6) for name in texts}}) + "\n"
        for k, r in enumerate(test)))
    out.markdown.write_text(markdown(report, examples) + "\n")
    plot(report, out.plot)
    write_json(out.report_file, report)  # last: marks the evaluation done
    return report
