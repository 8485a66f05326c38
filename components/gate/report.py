"""The comparison report: the Markdown shown in MLflow and the Kubeflow UI, its HTML twin, and the loss curve.

Images are never embedded in the Markdown (MLflow's viewer shows data URIs as broken images): MLflow gets the
plot as a PNG beside ``report.md``, referenced by relative path; the Kubeflow UI gets the Markdown with the loss
curve as a text sparkline, and an HTML artifact with the plot embedded.

Text that comes from users or models (prompts, reference answers, generated answers) is escaped before it goes
into the Markdown (:func:`escape_markdown`): it can neither break a table nor inject HTML into the page.
"""

import base64
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from components.common import markdown
from components.common.mlflow_artifacts import find_artifact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from components.gate.generation import GenerationComparison, SideBySide
    from components.gate.judge import JudgeComparison
    from components.gate.rules import Comparison

LOSS_HISTORY_METRICS = ("loss", "train/loss")
MAX_PLOT_BYTES = 2_000_000  # larger plots bloat the UI's Markdown artifact; the sparkline stands in
SPARK = "▁▂▃▄▅▆▇█"
SHOWN_CHARS = 600  # of each prompt, reference and answer in the side-by-side rows
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#!|~&$])")


def train_loss(client: "MlflowClient", run_id: str | None) -> float | None:
    """The mean training loss the train step logged (None when absent or the run is unknown)."""
    from mlflow.exceptions import MlflowException

    if not run_id or run_id == "n/a":
        return None
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:
        return None
    return float(metrics["train_loss"]) if "train_loss" in metrics else None


def sparkline(values: list[float]) -> str:
    """A one-line text plot of ``values`` (``▁`` lowest to ``█`` highest)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((value - low) / span * len(SPARK)))] for value in values)


class LossCurve(NamedTuple):
    """The training loss curve of a run: the train step's PNG plot (or None) and a one-line text summary."""

    png: bytes | None
    text: str


def loss_curve(client: "MlflowClient", train_run_id: str | None) -> LossCurve:
    """The train run's loss plot (the PNG artifact it logged) and a sparkline of its loss history."""
    from mlflow.exceptions import MlflowException

    if not train_run_id or train_run_id == "n/a":
        return LossCurve(None, "_No training run: no loss curve._")
    png, text = None, f"_Run {train_run_id} logged no loss history._"
    try:
        plot = find_artifact(client, train_run_id, lambda name: name.endswith(".png") and "loss" in name)
        if plot:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(client.download_artifacts(train_run_id, plot, tmp)).read_bytes()
            png = data if len(data) <= MAX_PLOT_BYTES else None
        for name in LOSS_HISTORY_METRICS:
            history = sorted(client.get_metric_history(train_run_id, name), key=lambda m: (m.step, m.timestamp))
            if history:
                values = [m.value for m in history]
                text = (f"`{sparkline(values)}`  \n{name} over {len(values)} logged steps "
                        f"(step {history[0].step}: {values[0]:.4f}, min {min(values):.4f}, "
                        f"step {history[-1].step}: {values[-1]:.4f})")
                break
    except MlflowException as exc:
        text = f"_Loss history of run {train_run_id} not readable: {getattr(exc, 'error_code', exc)}_"
    return LossCurve(png, text)


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def render_report(comparison: "Comparison", *, training_loss: float | None = None, loss_plot: str = "",
                  note: str = "", trials: str = "") -> str:
    """The Markdown report: the decision, every rule, the held-out task table, the MMLU table, training.

    ``loss_plot`` is how the report shows the training loss curve: a relative image path (MLflow shows the PNG
    logged beside the report), a sparkline, or a note; "" leaves the section out. ``note`` is plain text (it may
    quote paths, run ids or errors): it is escaped, so that it reads as written and never renders as markup.
    ``trials`` is a sweep's table of trials (:func:`components.train.select_trial.trials_table`); "" without a sweep.
    """
    decision, baseline, task, mmlu = comparison.decision, comparison.baseline_name, comparison.task, comparison.mmlu
    title = "✅ Promote" if decision == "promote" else "⏸️ Keep the champion"
    lines = [f"# {title}: candidate vs {baseline}", "", f"**{comparison.headline}**", ""]
    lines += [f"- {'✅' if rule.passed else '❌'} {rule.detail}" for rule in
              sorted(comparison.rules, key=lambda rule: rule.passed)]
    if note:
        lines += ["", markdown.text(note)]
    lines += [
        "",
        f"## Held-out task: {task.rows} rows of the training data, never trained on",
        "",
        *([f"Neither model trained on these rows. {task.left_out_reason}.", ""] if task.left_out_rows else []),
        "| | Candidate | Baseline | Change |",
        "|---|---:|---:|---:|",
        f"| mean per-row answer loss (gated) | {task.candidate_mean_nll:.4f} | {task.baseline_mean_nll:.4f} | "
        f"{task.relative_change:+.2%} |",
        f"| loss over all answer tokens | {task.candidate_loss:.4f} | {task.baseline_loss:.4f} | "
        f"{task.candidate_loss / task.baseline_loss - 1:+.2%} |",
        f"| perplexity | {_perplexity(task.candidate_loss)} | {_perplexity(task.baseline_loss)} | |",
        "",
        f"Paired over the same rows: the candidate's loss is lower on {task.candidate_lower} and higher on "
        f"{task.baseline_lower}; mean difference {task.mean_difference:+.4f} nats; "
        f"{task.confidence:.0%} bootstrap interval of the change [{task.ci_low:+.2%}, {task.ci_high:+.2%}] "
        f"({task.bootstrap_samples} resamples, seed {task.seed}); one-sided Wilcoxon signed-rank "
        f"p={task.wilcoxon_p:.3g}.",
        "",
        f"## MMLU on the same {mmlu.questions} questions",
        "",
        "| | Questions | Candidate | Baseline | Delta | Only candidate right | Only baseline right | McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| **overall (micro)** | {mmlu.questions} | {mmlu.candidate_micro:.4f} | {mmlu.baseline_micro:.4f} | "
        f"{mmlu.delta_micro:+.4f} | {mmlu.candidate_only} | {mmlu.baseline_only} | {mmlu.mcnemar_p:.3g} |",
        f"| macro | | {mmlu.candidate_macro:.4f} | {mmlu.baseline_macro:.4f} | {mmlu.delta_macro:+.4f} | | | |",
    ]
    for row in mmlu.categories:
        lines.append(f"| {row.name} | {row.questions} | {row.candidate:.4f} | {row.baseline:.4f} | {row.delta:+.4f} | "
                     f"{row.candidate_only} | {row.baseline_only} | {row.p_value:.3g} |")
    lines += ["", f"{task.confidence:.0%} bootstrap interval of the micro difference: "
                  f"[{mmlu.ci_low:+.4f}, {mmlu.ci_high:+.4f}]."]
    if comparison.generation is not None:
        lines += ["", *generation_section(comparison.generation, comparison.judge)]
    if trials:
        lines += ["", "## Trials: the candidate won on the validation rows", "",
                  "Each trial trained on the same rows; the lowest validation loss won (ties: the lower trial). The "
                  "held-out rows above were read only now, for the winner: no choice was made on them.", "",
                  trials.rstrip("\n")]
    if training_loss is not None or loss_plot:
        lines += ["", "## Training", ""]
        if training_loss is not None:
            lines += [f"Mean training loss of the candidate: {_number(training_loss)}.", ""]
        if loss_plot:
            lines.append(loss_plot)
    return "\n".join(lines) + "\n"


def escape_markdown(text: str, limit: int = SHOWN_CHARS) -> str:
    """User or model text made safe for one Markdown table cell or paragraph: cut at ``limit`` characters, line
    breaks shown as ``↵``, every character Markdown or HTML would read as syntax backslash-escaped."""
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    flat = " ↵ ".join(line.strip() for line in text.strip().splitlines()) or "(empty)"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def generation_section(generation: "GenerationComparison", judge: "JudgeComparison | None" = None) -> list[str]:
    """The report's lines on the generated answers: the scores of both, the judge, the rows that differ most."""
    from components.gate.generation import METRIC_LABELS

    rows, tokens = generation.rows, generation.max_new_tokens
    lines = [f"## Generated answers: {rows} held-out rows, greedy, at most {tokens} new tokens", "",
             "| score (0-100 per row) | Candidate | Baseline | Mean difference | "
             f"{generation.confidence:.0%} interval |", "|---|---:|---:|---:|---|"]
    for metric in generation.metrics:
        gated = " (gated)" if metric.name == generation.metric else ""
        lines.append(f"| {METRIC_LABELS[metric.name]}{gated} | {metric.candidate:.2f} | {metric.baseline:.2f} | "
                     f"{metric.mean_difference:+.2f} | [{metric.ci_low:+.2f}, {metric.ci_high:+.2f}] |")
    lines += [f"| stopped before {tokens} tokens | {generation.candidate_stopped}/{rows} | "
              f"{generation.baseline_stopped}/{rows} | | |",
              f"| mean answer length (tokens) | {generation.candidate_answer_tokens:.1f} | "
              f"{generation.baseline_answer_tokens:.1f} | | |"]
    if judge is not None:
        lines += ["", f"Judge {escape_markdown(judge.model, 200)} on {judge.rows} rows, each asked in both orders: "
                      f"the candidate wins {judge.candidate_wins}, the baseline {judge.baseline_wins}, {judge.ties} "
                      f"ties; two-sided sign test p={judge.sign_test_p:.3g}."]
    label = METRIC_LABELS[generation.metric]
    for title, pairs in ((f"Worst regressions ({label}, candidate minus baseline)", generation.regressions),
                         (f"Best improvements ({label}, candidate minus baseline)", generation.improvements)):
        lines += ["", f"### {title}", ""]
        if not pairs:
            lines.append("_None: no row scores " + ("lower" if "regressions" in title else "higher") + "._")
        for number, pair in enumerate(pairs, 1):
            lines += [*_side_by_side(number, pair, label, generation.metric), ""]
    return lines


def _side_by_side(number: int, pair: "SideBySide", label: str, metric: str) -> list[str]:
    history = f" (after {pair.history_turns} earlier turn{'s' * (pair.history_turns != 1)})" \
        if pair.history_turns else ""
    cand, base = pair.candidate_scores, pair.baseline_scores
    lines = [f"**{number}. {label} {getattr(base, metric):.2f} → {getattr(cand, metric):.2f} "
             f"({pair.difference:+.2f})**, row `{pair.row}`", "",
             f"- prompt{history}: {escape_markdown(pair.prompt)}", f"- reference: {escape_markdown(pair.reference)}",
             "", "| | Candidate | Baseline |", "|---|---|---|",
             f"| answer | {escape_markdown(pair.candidate_answer)} | {escape_markdown(pair.baseline_answer)} |"]
    from components.gate.generation import METRIC_LABELS

    for name, shown in METRIC_LABELS.items():
        lines.append(f"| {shown} | {getattr(cand, name):.2f} | {getattr(base, name):.2f} |")
    stopped = ("yes" if flag else "no" for flag in (pair.candidate_stopped, pair.baseline_stopped))
    lines.append("| stopped | {} | {} |".format(*stopped))
    return lines


def _perplexity(loss: float) -> str:
    import math

    return f"{math.exp(loss):.2f}" if loss < 700 else "inf"


def render_html(markdown_text: str, images: dict[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page (the Kubeflow UI's HTML artifact): ``images`` maps the relative
    image paths the Markdown references to their PNG bytes, which are embedded."""
    from markdown_it import MarkdownIt

    # html off: the report is generated Markdown, and raw HTML in it could only come from untrusted text
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    for name, data in (images or {}).items():
        body = body.replace(f'src="{name}"', f'src="data:image/png;base64,{base64.b64encode(data).decode()}"')
    style = ("body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    head = f'<meta charset="utf-8"><style>{style}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"
