"""The `humpback` command: parse, load the recipe, call the library, print. Nothing else here."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape  # paths, values and model text are printed as text, never as markup

from . import __version__, ui

if TYPE_CHECKING:
    from .recipe import EngineConfig


def _errors() -> tuple[type[BaseException], ...]:
    """User-facing error types: printed as one line, exit status 1, no traceback."""
    from .adapters import AdapterError
    from .corpus import CorpusError
    from .export import PushError
    from .ifeval import IFEvalError
    from .models import ModelError
    from .recipe import RecipeError
    from .store import DataError, RunBusy
    from .train import TrainError

    return (RecipeError, DataError, ModelError, CorpusError, AdapterError, PushError, TrainError, IFEvalError, RunBusy,
            OSError)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        from .ui import console

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] finished stages and complete records are kept; "
                          "rerun the same command to resume", highlight=False, soft_wrap=True)
            sys.exit(130)
        except _errors() as e:
            # the message quotes the user's paths and values: `runs/[exp1]` is text, not markup
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="humpback")
def main() -> None:
    """Instruction backtranslation (Humpback) on one machine: segment, augment, curate, train."""


def engine_options(f):
    """The engine settings a single-stage command takes, handed to it as `engine_cfg` (an
    EngineConfig; the rest are the recipe's defaults)."""
    @functools.wraps(f)
    def wrapper(*args, n_ctx: int, extra_buffers: str, base_url: str | None, api_key_env: str | None, **kw):
        from .recipe import EngineConfig

        remote = {"backend": "openai", "base_url": base_url, "api_key_env": api_key_env} if base_url else {}
        return f(*args, engine_cfg=EngineConfig(n_ctx=n_ctx, extra_buffers=extra_buffers, **remote), **kw)

    for opt in (
        click.option("--api-key-env", help="Environment variable holding the server's API key (with --base-url)."),
        click.option("--base-url", help="An OpenAI-compatible server's API root (llama-server, vLLM, "
                     "llama_cpp.server) instead of llama.cpp here; adapters are asked for by model name."),
        click.option("--extra-buffers", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="llama.cpp's extra CPU weight layouts; auto = off on CPUs with AMX (a known crash)."),
        click.option("--n-ctx", default=2048, show_default=True),
    ):
        wrapper = opt(wrapper)
    return wrapper


def _engines(model: str | Path, cfg: EngineConfig, seed: int = 0, runtime_type: str | None = None):
    """`adapter -> Engine` as the loop builds it for this model (the recipe's runtime tensor type
    unless `runtime_type` says otherwise)."""
    from dataclasses import replace

    from .engines import factory

    return factory(model, replace(cfg, runtime_type=runtime_type) if runtime_type else cfg, seed)


def _identity(engines, **parts) -> dict:
    """What a stand-alone command's output depends on (store.claim_output): files by digest, config
    sections as data, the model by its file and the engine settings that change texts."""
    from dataclasses import asdict, is_dataclass

    from .graph import ENGINE_SAME
    from .models import file_key
    from .store import file_digest

    engine = {k: v for k, v in asdict(engines.cfg).items() if f"engine.{k}" not in ENGINE_SAME}
    out: dict = {"model": file_key(Path(engines.gguf)), "engine": engine}  # path, size, mtime: no hashing GBs
    for name, value in parts.items():
        if is_dataclass(value):
            value = asdict(value)
        elif isinstance(value, (str, Path)) and name in {"segments", "pairs", "adapter", "backward_adapter"}:
            value = file_digest(value)
        out[name] = value
    return out


# ----------------------------------------------------------------------------- the loop


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (default runs/<recipe name>).")
def run(recipe: str, overrides: tuple[str, ...], out_dir: str | None) -> None:
    """Run (or resume) the whole loop described by RECIPE, with KEY=VALUE overrides.

    Example: humpback run recipes/quickstart.yaml rounds=1 train.epochs=2
    """
    from .loop import run as run_loop
    from .recipe import load_recipe
    from .ui import console

    rec = load_recipe(recipe, overrides)
    out = Path(out_dir or Path("runs") / rec.name)
    console.print(f"run folder: [bold]{escape(str(out))}[/] (rerun the same command to resume)")
    run_dir = run_loop(rec, out, progress=ui.progress, say=ui.say)  # writes the report too
    _print_status(run_dir.root)
    _print_summary(run_dir.root)
    console.print(f"[green]done:[/] {escape(str(run_dir.root / 'export'))}")


@main.command("serve-config")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (default runs/<recipe name>).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def serve_config(recipe: str, overrides: tuple[str, ...], out_dir: str | None, host: str, port: int) -> None:
    """Print a llama_cpp.server config that serves RECIPE's run (base model + every adapter).

    python -m llama_cpp.server --config_file <(humpback serve-config recipes/quickstart.yaml)
    """
    import json

    from .engines import resolve
    from .graph import adapter_stages
    from .recipe import load_recipe
    from .remote import llama_cpp_server_config
    from .runtime import runtime_path

    rec = load_recipe(recipe, overrides)
    base = runtime_path(resolve(rec.model), rec.engine)  # the file a local engine runs
    run_dir = Path(out_dir or Path("runs") / rec.name)
    adapters = [run_dir / stage / "adapter.gguf" for stage in adapter_stages(rec)]
    click.echo(json.dumps(llama_cpp_server_config(rec.engine, base, adapters, host, port), indent=2))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--judge", help='Judge for win rates: "final" (default), "base", a model card name or a .gguf path.')
@click.option("--limit", type=int, help="Use at most this many held-out pairs.")
@click.option("--ifeval", help='IFEval prompts per model: "all" (541), N (a subset keeping every type), 0 (none).')
def evaluate(run_dir: str, overrides: tuple[str, ...], judge: str | None, limit: int | None,
             ifeval: str | None) -> None:
    """Score every model of RUN_DIR: NLL and win rates on its held-out seed pairs, and IFEval.

    Evaluates base, M0 .. Mn, then refreshes the model card and the report. OVERRIDES are recipe
    keys, e.g. evaluate.max_new_tokens=64. They are saved in RUN_DIR/recipe.yaml (said when
    given): the folder's recipe describes what its stages hold, so a later `humpback run` does not
    redo the evaluation with the old settings."""
    from .loop import load_run

    extra = list(overrides) + ([f"evaluate.judge={judge}"] if judge else [])
    extra += [f"evaluate.limit={limit}"] if limit is not None else []  # 0 is refused by the recipe, not ignored
    extra += [f"evaluate.ifeval={ifeval}"] if ifeval is not None else []
    load_run(run_dir, extra, progress=ui.progress, say=ui.say).evaluate()  # refreshes card and report
    if extra:
        ui.say(f"{Path(run_dir) / 'recipe.yaml'} now holds {' '.join(extra)}")
    _print_summary(Path(run_dir))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir: str) -> None:
    """Write RUN_DIR/report/index.html (one self-contained page with plots) and print a summary."""
    _print_report(Path(run_dir))


def _print_report(root: Path) -> None:
    from .report import gather, write_report
    from .store import Run

    Run.existing(root)
    g = gather(root)
    write_report(root, g)
    _print_summary(root, g)


def _print_summary(root: Path, g: dict | None = None) -> None:
    from .report import gather, summary_table
    from .ui import console

    console.print(summary_table(g or gather(root)))
    console.print(f"report: [bold]{escape(str(root / 'report' / 'index.html'))}[/]", highlight=False, soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", required=True, help="Hugging Face model repo, owner/name (created if missing).")
@click.option("--dry-run", is_flag=True, help="List the files that would be uploaded; upload nothing.")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--no-merged", is_flag=True, help="Leave out model.gguf (the merged model).")
@click.option("--token", envvar="HF_TOKEN", help="Hub token (default: $HF_TOKEN or `hf auth login`).")
def push(run_dir: str, repo: str, dry_run: bool, private: bool, no_merged: bool, token: str | None) -> None:
    """Upload RUN_DIR/export (adapters, merged GGUF, dataset, model card) to the Hugging Face Hub."""
    from .export import push as do_push
    from .ui import console

    files = do_push(Path(run_dir) / "export", repo, dry_run=dry_run, private=private, token=token,
                    include_merged=not no_merged)
    for name, size in files:
        console.print(f"  {escape(str(name))}  [dim]{size / 2**20:.1f} MB[/]", highlight=False)
    verb = "would upload" if dry_run else "uploaded"
    console.print(f"{verb} {len(files)} files ({sum(s for _, s in files) / 2**20:.1f} MB) to "
                  f"https://huggingface.co/{repo}", highlight=False, soft_wrap=True)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--model", default="smollm2-135m", show_default=True, help="Base model (with --adapter).")
@click.option("--adapter", type=click.Path(exists=True, dir_okay=False), help="A GGUF LoRA instead of a run.")
@click.option("--system", help="System prompt (default: the seed tag the model was trained with).")
@click.option("--max-tokens", default=256, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@engine_options
def chat(run_dir: str | None, model: str, adapter: str | None, system: str | None, max_tokens: int,
         temperature: float, engine_cfg: EngineConfig) -> None:
    """Chat with the final model of RUN_DIR (or --model with --adapter). /exit or Ctrl-D quits,
    /reset starts over."""
    from . import prompts
    from .chat import Chat, run_model
    from .models import ContextError, ModelError, fetch, get_card
    from .ui import console

    if run_dir:
        gguf, lora = run_model(run_dir)
    elif adapter:
        gguf, lora = fetch(get_card(model)), Path(adapter)
    else:
        raise ModelError("give a run folder or --adapter")
    # The file as it is: chat generates token by token, where Q8_0 (the merged export) beats BF16.
    engine = _engines(gguf, engine_cfg, runtime_type="original")(lora, batched=False)
    session = Chat(engine, system or prompts.SEED_TAG, max_tokens=max_tokens, temperature=temperature)
    console.print(escape(f"chatting with {gguf.name}" + (f" + {lora.name}" if lora else "")) + "; /exit quits, /reset starts over",
                  highlight=False, soft_wrap=True)
    try:
        while True:
            try:
                text = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
            except (EOFError, click.Abort):
                break
            if text.strip() in ("/exit", "/quit"):
                break
            if text.strip() == "/reset":
                session.history.clear()
                continue
            if text.strip():
                try:
                    console.print(f"[bold cyan]model>[/] {escape(session.reply(text))}", highlight=False, soft_wrap=True)
                except ContextError as e:  # the conversation goes on
                    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    finally:
        engine.close()


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def status(run_dir: str, as_json: bool) -> None:
    """Show the stages of a run: status, counts, kept pairs and times."""
    if as_json:
        from .store import Run

        click.echo(json.dumps(Run.existing(run_dir).manifest, indent=2))
        return
    _print_status(Path(run_dir))


_QUIET_COUNTS = {"gguf", "backend", "tokens_per_epoch", "first_loss", "last_loss", "resumed_from"}


def _compact(v: object) -> str:
    if isinstance(v, dict):
        return "{" + " ".join(f"{k}:{_compact(x)}" for k, x in v.items()) + "}"
    return str(v)


def _print_status(root: Path) -> None:
    from rich.table import Table

    from .loop import load_run
    from .recipe import RecipeError
    from .store import Run
    from .ui import console

    run_ = Run.existing(root)
    try:  # judged against the run's recipe: out-of-date stages and rounds it no longer has
        states = load_run(root).states()
    except RecipeError:
        states = {}
    table = Table(title=f"run {root}")
    for col in ("stage", "status", "seconds", "counts"):
        table.add_column(col)
    for name, rec in run_.manifest["stages"].items():
        counts = {k: v for k, v in (rec.get("counts") or {}).items() if k not in _QUIET_COUNTS}
        shown = ", ".join(f"{k}={_compact(v)}" for k, v in counts.items())
        state = states.get(name, rec["status"])
        style = {"done": "", "not in recipe": "dim", "out of date": "yellow"}.get(state, "yellow")
        table.add_row(name, f"[{style}]{state}[/]" if style else state, f"{rec.get('seconds') or '':}", shown)
    for name, state in states.items():
        if name not in run_.manifest["stages"]:
            table.add_row(name, f"[dim]{state}[/]", "", "")
    console.print(table)


@main.command()
def models() -> None:
    """List model cards and whether each is cached locally."""
    from rich.table import Table

    from .engines import settings
    from .hardware import describe_train_dtype
    from .models import get_card, home, list_cards
    from .recipe import EngineConfig, Recipe
    from .ui import console

    table = Table(title=f"models (cache: {home() / 'models'})")
    for col in ("name", "description", "license", "gguf from", "cached"):
        table.add_column(col)
    for card in list_cards():
        parts = card.gguf.get("parts") or []
        src = (card.gguf.get("pypi") or card.gguf.get("hf_repo") or card.gguf.get("path", "")
               or (f"{parts[0].get('pypi', '?')} + {len(parts) - 1} more" if parts else ""))
        table.add_row(card.name, card.description, card.license, src, "yes" if card.is_cached() else "no")
    console.print(table)
    default = get_card(Recipe.model)
    shown = settings(EngineConfig(), default.gguf_path if default.is_cached() else None)
    console.print(f"llama.cpp on this machine (recipe defaults, {default.name}): "
                  + ", ".join(f"{k} {v}" for k, v in shown.items()))
    console.print(f"training on this machine: dtype {describe_train_dtype()}")


# ----------------------------------------------------------------------------- single stages on plain files


def _filter_option(name: str, *decls: str, **kw):
    """A `humpback segment` option for one corpus filter, with the default and help of its one
    description (recipe.CorpusFilters, the recipe's `data` fields of the same name)."""
    import dataclasses

    from .recipe import CorpusFilters, field_docs

    f = next(f for f in dataclasses.fields(CorpusFilters) if f.name == name)
    help_ = field_docs(CorpusFilters)[name] + f" (recipe: data.{name})"
    if f.type in (list[str], "list[str]"):
        return click.option(*decls, name, multiple=True, help=help_ + " Repeatable.", **kw)
    return click.option(*decls, name, default=f.default, show_default=True, help=help_, **kw)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="segments.jsonl to write.")
@_filter_option("min_chars", "--min-chars")
@_filter_option("max_chars", "--max-chars")
@click.option("--max-segments", type=int, default=None, help="A uniform sample of this many segments.")
@_filter_option("text_field", "--field")
@_filter_option("include", "--include")
@_filter_option("exclude", "--exclude")
@_filter_option("dedup", "--dedup", type=click.Choice(["minhash", "exact", "none"]))
@_filter_option("dedup_threshold", "--dedup-threshold")
@_filter_option("repetition", "--repetition")
@_filter_option("language", "--language", type=click.Choice(["en"]))
@click.option("--keep-headers", is_flag=True, help="Keep sections under empty/all-caps/navigation headings "
              "(recipe: data.headers=false).")
@click.option("--keep-boilerplate", is_flag=True, help="Keep cookie/menu/share lines (recipe: data.boilerplate=false).")
@click.option("--workers", type=int, default=None, help="Processes for extraction (default: auto, by input size).")
def segment(inputs, output, min_chars, max_chars, max_segments, text_field, include, exclude, dedup,
            dedup_threshold, repetition, language, keep_headers, keep_boilerplate, workers) -> None:
    """Split INPUTS into candidate answers (`text`, `provenance`, `heading`, `offset`).

    INPUTS: files or folders (.txt .md .html .warc .wet .jsonl .json .csv .parquet, each also
    .gz/.bz2/.xz/.zst), hf:owner/name[:config][:split], or pydoc:topics."""
    from . import corpus
    from .ui import console, funnel_table

    filters = corpus.Filters(min_chars=min_chars, max_chars=max_chars, repetition=repetition, headers=not keep_headers,
                             boilerplate=not keep_boilerplate, language=language, dedup=dedup,
                             dedup_threshold=dedup_threshold, text_field=text_field, include=list(include),
                             exclude=list(exclude))
    warn = lambda w: console.print(w, style="yellow", markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    counts = corpus.run(list(inputs), Path(output), filters, max_segments, workers=workers, progress=ui.progress,
                        warn=warn)
    console.print(funnel_table(counts.funnel))
    share = f" ({counts.text_yield:.0%} of the extracted text)" if counts.text_yield is not None else ""
    console.print(escape(f"{counts.segments} segments -> {output}{share}"))


@main.command()
@click.argument("segments", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="pairs.jsonl (appends; resumes).")
@click.option("--model", default="smollm2-135m", show_default=True, help="Model card name or .gguf path.")
@click.option("--adapter", type=click.Path(exists=True, dir_okay=False), help="Backward-model GGUF LoRA.")
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--top-p", default=0.9, show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@engine_options
def augment(segments, output, model, adapter, temperature, top_p, max_new_tokens, seed, engine_cfg) -> None:
    """Write an instruction for every segment (self-augmentation with a backward model)."""
    from . import augment as stage
    from .recipe import AugmentConfig
    from .store import claim_output
    from .ui import console

    cfg = AugmentConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    engines = _engines(model, engine_cfg, seed)
    claim_output(output, _identity(engines, segments=segments, adapter=adapter, augment=cfg, seed=seed), "augment")
    counts = stage.run(Path(segments), Path(output), cfg, engines,
                       Path(adapter) if adapter else None, seed, progress=ui.progress)
    console.print(escape(f"{counts.pairs} pairs -> {output}"))


@main.command()
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="scored.jsonl (appends; resumes).")
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--adapter", type=click.Path(exists=True, dir_okay=False), help="Judge GGUF LoRA (e.g. M0).")
@click.option("--mode", type=click.Choice(["expected", "greedy", "reasoning", "pmi", "ifd", "backward", "combined"]),
              default="expected", show_default=True,
              help="Rubric (expected, greedy, reasoning) or likelihood signal (see docs/curation.md).")
@click.option("--backward-adapter", type=click.Path(exists=True, dir_okay=False),
              help="Backward-model GGUF LoRA (M_yx), for the backward signal.")
@click.option("--instruction-field", help="Field holding the instruction (default: auto-detect).")
@click.option("--output-field", help="Field holding the answer (default: auto-detect).")
@click.option("--no-tags", is_flag=True, help="Judge without the seed tag as system prompt.")
@engine_options
@click.argument("overrides", nargs=-1)
def score(pairs, output, model, adapter, mode, backward_adapter, instruction_field, output_field, no_tags, engine_cfg,
          overrides) -> None:
    """Score every (instruction, output) pair with the rubric and likelihood signals.

    PAIRS may be ours (instruction/output), Alpaca (instruction/input/output), ShareGPT
    (conversations) or messages (first user and assistant turn). OVERRIDES are curate keys, e.g.
    signals=[rubric,pmi,backward] combine=[pmi,backward]."""
    from .curate import normalize_pairs, run_score, wanted_signals
    from .recipe import CurateConfig, build
    from .store import claim_output, read_jsonl
    from .ui import console

    cfg = build(CurateConfig, [f"mode={mode}", "top_fraction=1", *overrides], prefix="curate.")
    rows = normalize_pairs(read_jsonl(pairs), pairs, instruction_field, output_field)
    if "backward" in wanted_signals(cfg) and not backward_adapter:
        raise click.UsageError("the backward signal needs --backward-adapter (a backward model's adapter.gguf)")
    engines = _engines(model, engine_cfg)
    claim_output(output, _identity(engines, pairs=pairs, adapter=adapter, backward_adapter=backward_adapter,
                                   curate=cfg, tags=not no_tags, fields=[instruction_field, output_field]), "score")
    summary = run_score(rows, Path(output), cfg, engines,
                        judge=Path(adapter) if adapter else None,
                        backward=Path(backward_adapter) if backward_adapter else None, tags=not no_tags,
                        progress=ui.progress)
    console.print(escape(f"{summary.scored} scored -> {output}; mean {summary.mean_score}"
                         + (f"; rubric histogram {summary.histogram}" if summary.histogram else "")))


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Adapter folder to write.")
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--direction", type=click.Choice(["forward", "backward"]), default="forward", show_default=True,
              help="forward: instruction -> output; backward: output -> instruction.")
@click.option("--no-tags", is_flag=True)
@click.argument("overrides", nargs=-1)
def train(data, output, model, direction, no_tags, overrides) -> None:
    """Fine-tune a LoRA on DATA (JSONL with `instruction`, `output`); writes PEFT + adapter.gguf.

    OVERRIDES are TrainConfig keys, e.g. epochs=2 lora_r=8 max_steps=10.
    """
    from . import prompts
    from . import train as stage
    from .engines import resolve
    from .models import get_card
    from .recipe import TrainConfig, build
    from .store import read_jsonl
    from .ui import console

    cfg = build(TrainConfig, overrides, prefix="train.")
    rows = read_jsonl(data, required=("instruction", "output"))
    if direction == "backward":
        examples = [prompts.backward_row(r) for r in rows]
    else:
        examples = [prompts.forward_row(r, not no_tags) for r in rows]  # `source`: seed (default) | augmented
    stats = stage.run(examples, Path(output), Path(output) / "adapter.gguf", get_card(model), resolve(model), cfg,
                      progress=ui.progress)
    console.print(escape(f"adapter -> {output} (+ adapter.gguf); {stats}"))


if __name__ == "__main__":  # pragma: no cover
    main()
