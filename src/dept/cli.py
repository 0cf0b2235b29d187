"""The `dept` command line: thin wrappers that parse, call the library and print.

    dept prepare CONFIG [key=value ...]        read sources, train tokenizers, write packed shards
    dept train CONFIG [key=value ...]          pre-train (variant from train.variant)
    dept train --resume RUN_DIR                continue a stopped run from its last checkpoint
    dept eval RUN_DIR                          evaluate the last checkpoint of a run
    dept compare CONFIG --variants a,b,...     prepare + train several variants (in RUN_DIR-compare/), one table
    dept comms --preset paper-mc4-1.7b         communication per round, analytically
    dept comms --config CONFIG [key=value ...] the same for a config's model, variant and prepared sources
    dept plan CONFIG [key=value ...]           memory per rank (parameters, gradients, AdamW, activations): fits?
    dept consolidate RUN_DIR                   continued pre-training: one global-vocabulary model for all sources
    dept adapt RUN_DIR... --source NAME=FILES  a new source: own tokenizer, fresh embedding, bits-per-byte curves
    dept finetune MODEL --train F --eval F     a classification / regression head (CSV or JSONL)
    dept export MODEL --out DIR                a Hugging Face `transformers` folder (Llama architecture)
    dept generate MODEL "prompt"               sample a continuation, streamed
    dept report RUN_DIR... --out DIR           plots and a Markdown/HTML page over runs
    dept flower superlink|supernode|run        a Flower deployment (see dept.engines.flower_commands)
    dept settings                              every config key with its type, default and meaning
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dept.errors import DeptError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Pre-train language models with Decoupled Embeddings (DEPT) on many heterogeneous sources.")
console = Console(width=None if sys.stdout.isatty() else 150)

Overrides = Annotated[list[str] | None, typer.Argument(help="Settings to override, as key.path=value "
                                                            "(e.g. train.rounds=20 model.d_model=512)")]
ConfigPath = Annotated[Path, typer.Argument(help="YAML config (see configs/ and `dept settings`)")]


def _log(msg: str) -> None:
    console.print(msg, markup=False, highlight=False)


@app.command()
def prepare(config: ConfigPath, overrides: Overrides = None,
            force: Annotated[bool, typer.Option(help="Redo every source even if unchanged")] = False) -> None:
    """Split the sources, train global and per-source tokenizers, write packed shards (unchanged sources skipped)."""
    from dept.config import load_config
    from dept.data.prepare import prepare as run_prepare

    cfg = load_config(config, overrides)
    report = run_prepare(cfg, log=_log, force=force, show_progress=console.is_terminal)
    _log(f"prepared {len(report.prepared)} source(s), skipped {len(report.skipped)} unchanged, in "
         f"{report.total_s:.1f}s; encoding {report.encoded_bytes / 1e6:.1f} MB at {report.encode_mb_per_s:.1f} MB/s "
         f"-> {cfg.data_dir}")


@app.command()
def train(config: Annotated[Path | None, typer.Argument(help="YAML config (omit with --resume)")] = None,
          overrides: Overrides = None,
          resume: Annotated[Path | None, typer.Option(help="Run folder to continue from its last checkpoint")] = None,
          from_checkpoint: Annotated[int | None, typer.Option(
              help="With --resume: continue from checkpoint round_N instead of the newest (newer ones are set "
                   "aside in checkpoints/.discarded)", min=0)] = None,
          ) -> None:
    """Pre-train with the variant in train.variant (glob, trim, spec, spec_opt) or a baseline (std, act)."""
    from dept.config import load_config
    from dept.report import run_table
    from dept.training import resume_config, run_training

    if resume is not None:
        if config is not None:
            overrides = [str(config)] + list(overrides or [])
        cfg = resume_config(resume)
        if overrides:
            from dept.config import apply_overrides, config_from_dict

            tree = apply_overrides(cfg.to_dict(), overrides)
            cfg = config_from_dict(tree, f"{resume}/config.yaml", base_dir=resume)
    elif config is None:
        raise DeptError("train needs a CONFIG file, or --resume RUN_DIR")
    elif from_checkpoint is not None:
        raise DeptError("--from-checkpoint goes with --resume RUN_DIR")
    else:
        cfg = load_config(config, overrides)
    try:
        wrote = run_training(cfg, resume=resume is not None, log=_log, from_checkpoint=from_checkpoint)
    except KeyboardInterrupt:  # writes are atomic: the run is as its last checkpoint left it
        from dept.checkpoint import latest_checkpoint

        last = latest_checkpoint(cfg.run_dir) if cfg.run_dir.is_dir() else None
        where = f"from {last.name}" if last is not None else "from the start (no checkpoint yet)"
        print(f"stopped; `dept train --resume {cfg.run_dir}` continues {where}", file=sys.stderr)
        sys.exit(130)
    if wrote:
        from dept.report import load_results

        console.print(run_table(load_results(cfg.run_dir)))
        _log(f"run folder: {cfg.run_dir}")


@app.command("eval")
def evaluate(run_dir: Annotated[Path, typer.Argument(help="Run folder")],
             max_bytes: Annotated[int | None, typer.Option(help="Validation bytes per source (whole documents)",
                                                                 min=1)]
             = None) -> None:
    """Evaluate a run's last checkpoint on every source (needs the prepared data only): loss, perplexity, bits/byte."""
    from dept.report import run_table
    from dept.training import evaluate_run

    out = evaluate_run(run_dir, log=_log, max_bytes=max_bytes)
    console.print(run_table(out, title=f"{out['variant']} after round {out['round']}: validation"))


@app.command()
def doctor(folder: Annotated[Path, typer.Argument(help="A run folder or a prepared-data folder")]) -> None:
    """Verify a run or data folder whole (checksums, checkpoints, metrics, source states, locks); exit 1 on a
    problem."""
    from dept.doctor import PROBLEM
    from dept.doctor import doctor as check

    findings = check(folder)
    for finding in findings:
        print(_one_line(finding.line()))
    problems = sum(f.level == PROBLEM for f in findings)
    print(f"{problems} problem(s)" if problems else "no problem found")
    if problems:
        raise typer.Exit(1)


@app.command()
def compare(config: ConfigPath, overrides: Overrides = None,
            variants: Annotated[str, typer.Option(help="Comma-separated variants to train")] =
            "spec_opt,spec,trim,glob,std",
            ) -> None:
    """Prepare, train each variant into RUN_DIR-compare/VARIANT (finished runs reused, unfinished ones resumed),
    print one bits-per-byte table. RUN_DIR itself stays `dept train CONFIG`'s."""
    from dept.atomic_io import write_json_atomic, write_text_atomic
    from dept.compare import comparison_dir, train_or_reuse, variant_config
    from dept.config import Variant, load_config
    from dept.data.prepare import prepare as run_prepare
    from dept.report import comparison_markdown, comparison_table, load_results

    names = [v.strip() for v in variants.split(",") if v.strip()]
    if not names:
        raise DeptError(f"--variants: '{variants}' names no variant (e.g. spec_opt,glob,std)")
    for v in names:
        if v not in {x.value for x in Variant}:
            raise DeptError(f"--variants: unknown variant '{v}' (choose from {', '.join(x.value for x in Variant)})")
    base = load_config(config, overrides)
    run_prepare(base, log=_log, show_progress=console.is_terminal)
    runs = {}
    for v in names:
        cfg = variant_config(config, list(overrides or []), v)
        _log(f"== {v}: {cfg.run_dir}")
        train_or_reuse(cfg, log=_log)
        runs[v] = load_results(cfg.run_dir)
    console.print(comparison_table(runs))
    folder = comparison_dir(base.run_dir)
    write_json_atomic(folder / "comparison.json", runs)
    write_text_atomic(folder / "comparison.md", comparison_markdown(runs))
    _log(f"table written to {folder / 'comparison.md'}")


@app.command()
def comms(preset: Annotated[str | None, typer.Option(help="paper-mc4-1.7b: the paper's 1.71B MC4 model")] = None,
          config: Annotated[Path | None, typer.Option(help="Take the model, variant, sources per round and "
                                                           "vocabulary from a config (and its prepared data)")] = None,
          overrides: Annotated[list[str] | None, typer.Argument(help="With --config: settings to override, as "
                                                                     "key.path=value (as for `dept train`)")] = None,
          n_layers: Annotated[int, typer.Option(help="Blocks", min=1)] = 12,
          d_model: Annotated[int, typer.Option(help="Width", min=1)] = 768,
          d_mlp: Annotated[int, typer.Option(help="MLP hidden size (0 = 4·d_model for gelu)", min=0)] = 0,
          mlp: Annotated[str, typer.Option(help="swiglu or gelu")] = "gelu",
          vocab: Annotated[int, typer.Option(help="Global vocabulary", min=1)] = 250_112,
          own_vocab: Annotated[int, typer.Option(help="SPEC-OPT per-source vocabulary", min=1)] = 50_257,
          trim_fraction: Annotated[float, typer.Option(help="TRIM: share of the global rows a source holds, "
                                                             "in (0, 1]")] = 1.0,
          local_steps: Annotated[int, typer.Option(help="Local steps N per round", min=1)] = 500,
          body_params: Annotated[int, typer.Option(help="Use this body size instead of computing it", min=0)] = 0,
          dtype_bytes: Annotated[int, typer.Option(help="Bytes per parameter sent", min=1, max=8)] = 4,
          compression: Annotated[str | None, typer.Option(help="Uploads: none, bf16 or int8 (default: the "
                                                                "config's train.compression, else none)")] = None,
          compression_scale: Annotated[str | None, typer.Option(help="int8: a scale per tensor or row")] = None,
          bandwidth: Annotated[str, typer.Option(help="Link speeds in Gbit/s for the time per round, comma-"
                                                      "separated")] = "1,10",
          sources: Annotated[int, typer.Option(help="K: sites (sources) in the federation")] = 0,
          sources_per_round: Annotated[int, typer.Option(help="M: sources sampled per round (the server's link "
                                                              "carries M sites' traffic)")] = 0,
          keep_optimizer: Annotated[bool, typer.Option(help="Sites keep AdamW moments between rounds "
                                                            "(train.inner.keep_state)")] = False,
          ) -> None:
    """Per-round communication of each variant against STD's per-step all-reduce, embedding memory, each site's
    private state on disk, and the time a round's transfers take at given link speeds."""
    from dept.algorithm.compression import scheme_of
    from dept.config import Variant, load_config
    from dept.eval.comms import (
        PAPER_MC4_1B7,
        body_parameters,
        body_scale_count,
        comms_row,
        format_seconds,
        link_seconds,
        private_state_bytes,
    )

    if not 0 < trim_fraction <= 1:
        raise DeptError(f"--trim-fraction: {trim_fraction} is not a share in (0, 1]")
    if mlp not in ("swiglu", "gelu"):
        raise DeptError(f"--mlp: unknown '{mlp}' (choose swiglu or gelu)")
    try:
        links = [float(x) for x in bandwidth.split(",") if x.strip()]
    except ValueError:
        raise DeptError(f"--bandwidth: '{bandwidth}' is not a comma-separated list of Gbit/s") from None
    if not links or any(not (0 < x < float("inf")) for x in links):
        raise DeptError(f"--bandwidth: '{bandwidth}' needs positive, finite Gbit/s values")
    if sources < 0 or sources_per_round < 0:
        raise DeptError("--sources and --sources-per-round must be ≥ 0")

    if overrides and config is None:
        raise DeptError(f"'{overrides[0]}': key=value overrides go with --config CONFIG")
    note, plan, chosen, positions = "", None, None, 0
    variants = (Variant.STD, Variant.GLOB, Variant.TRIM, Variant.SPEC, Variant.SPEC_OPT)
    if preset == "paper-mc4-1.7b":
        p = PAPER_MC4_1B7
        n_layers, d_model, d_mlp, mlp, vocab = p["n_layers"], p["d_model"], p["d_mlp"], p["mlp"], p["vocab"]
        local_steps, own_vocab = p["local_steps"], p["own_vocab"]
        sources, sources_per_round = sources or p["sources"], sources_per_round or p["sources_per_round"]
        computed = body_parameters(n_layers, d_model, d_mlp, mlp)
        body_params = body_params or p["reported_body"]
        note = (f"body {body_params / 1e9:.3f}B as the paper reports (12·L·d² + norms = {computed / 1e9:.3f}B "
                f"gives {local_steps * (computed + vocab * d_model) / computed:.0f}×)")
    elif preset is not None:
        raise DeptError(f"--preset: unknown preset '{preset}' (choose paper-mc4-1.7b)")
    elif config is not None:
        from dept.eval.config_comms import config_comms

        given = [f"train.{key}={value}" for key, value in (("compression", compression),
                                                           ("compression_scale", compression_scale),
                                                           ("sources_per_round", sources_per_round)) if value]
        cfg = load_config(config, list(overrides or []) + given)  # the options, where given, win
        plan = config_comms(cfg)
        compression, compression_scale = cfg.train.compression, cfg.train.compression_scale
        n_layers, d_model, d_mlp, mlp = cfg.model.n_layers, cfg.model.d_model, cfg.model.mlp_hidden, "swiglu"
        local_steps, vocab, positions = plan.local_steps, plan.global_vocab, plan.positions
        # the table's rows are the mean source's; the lines under it are the config's own sources
        trim_fraction = sum(plan.trim_rows.values()) / len(plan.trim_rows) / vocab
        own_vocab = round(sum(plan.own_vocab.values()) / len(plan.own_vocab))
        sources, sources_per_round = sources or plan.sources, plan.sources_per_round
        keep_optimizer = keep_optimizer or cfg.train.inner.keep_state
        variants = tuple(dict.fromkeys((*variants, cfg.train.variant)))
        chosen = cfg.train.variant
    d_mlp = d_mlp or 4 * d_model
    body = body_params or body_parameters(n_layers, d_model, d_mlp, mlp)
    try:
        scheme = scheme_of(compression or "none", compression_scale or "tensor")
    except ValueError:
        raise DeptError(f"--compression: unknown '{compression}' (choose none, bf16 or int8)") from None
    if compression_scale not in (None, "tensor", "row"):
        raise DeptError(f"--compression-scale: unknown '{compression_scale}' (choose tensor or row)")
    body_scales = body_scale_count(n_layers, d_model, d_mlp, mlp, per=(compression_scale or "tensor"))
    table = Table(title=f"per sampled source per round (N={local_steps}): body {body / 1e6:.1f}M, "
                        f"vocabulary {vocab}, d_model {d_model}"
                        + (f", uploads {scheme}" if scheme else ""))
    megabytes = ("MB down", "MB up") if scheme else ("MB each way",)
    for col in ("variant", "params each way", *megabytes, "per-step equivalent", "less than STD",
                "embedding params held"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    rows = []
    def label(v: Variant) -> str:
        return v.value.upper().replace("_", "-") + (" (config)" if v == chosen else "")

    for v in variants:
        row = comms_row(v, body, d_model, vocab, local_steps, trim_rows=int(round(trim_fraction * vocab)),
                        own_vocab=own_vocab, positions=positions, dtype_bytes=dtype_bytes, compression=scheme,
                        body_scales=body_scales)
        rows.append((v, row))
        sizes = (f"{row.bytes_down / 1e6:,.1f}", f"{row.bytes_up / 1e6:,.1f}") if scheme else \
            (f"{row.bytes_up / 1e6:,.1f}",)
        table.add_row(label(v), f"{row.params_up / 1e6:,.1f}M", *sizes,
                      f"{row.params_up / local_steps / 1e6:,.2f}M",
                      f"{row.reduction_vs_std:,.0f}×", f"{row.embedding_params_held / 1e6:,.1f}M")
    console.print(table)
    timing = Table(title="per round at line rate (full-duplex links, no latency); private state per site in fp32"
                         + (f"; server: M = {sources_per_round} of K = {sources} sources a round"
                            if sources_per_round else ""))
    for col in ("variant", *(f"site link {g:g} Gbit/s" for g in links),
                *((f"server link {g:g} Gbit/s" for g in links) if sources_per_round else ()),
                "private state per site", *(("all K sites",) if sources else ())):
        timing.add_column(col, justify="left" if col == "variant" else "right")
    for v, row in rows:
        held = row.embedding_params_held // d_model
        state = private_state_bytes(v, body, d_model, held - positions, positions=positions,
                                    keep_optimizer=keep_optimizer, compression=scheme)
        site = [format_seconds(link_seconds(row.bytes_down, row.bytes_up, g)) for g in links]
        server = [("—" if v == Variant.STD  # STD's all-reduce runs between workers, through no server
                   else format_seconds(sources_per_round * link_seconds(row.bytes_down, row.bytes_up, g)))
                  for g in links] if sources_per_round else []
        disk = "—" if v == Variant.STD else f"{state / 1e6:,.1f} MB"
        timing.add_row(label(v), *site, *server, disk,
                       *((("—" if v == Variant.STD else f"{sources * state / 1e9:,.2f} GB"),) if sources else ()))
    console.print(timing)
    _log("STD's time is N synchronous all-reduces of every parameter (one each way per step, as counted above), "
         "spent inside the round's compute; DEPT's happen once, between rounds.")
    if note:
        _log(note)
    for line in plan.describe() if plan is not None else ():
        _log(line)


@app.command()
def plan(config: ConfigPath, overrides: Overrides = None,
         ranks_per_source: Annotated[int | None, typer.Option(help="Ranks that train one source together "
                                                                  "(overrides train.ranks_per_source; STD/ACT: "
                                                                  "the ranks that train the one model)", min=1)]
         = None,
         device_memory: Annotated[float | None, typer.Option(help="GiB of memory of one device (default: this "
                                                                  "machine's CUDA device)")] = None,
         ) -> None:
    """Memory per rank a config needs to train (parameters, gradients, AdamW state, activations, the host's copies)
    and whether it fits a device's memory: exit 0 when it fits, 1 when it does not."""
    import math

    import torch

    from dept.config import load_config
    from dept.memory_plan import GiB, plan_memory

    if device_memory is not None and not (0 < device_memory < math.inf):
        raise DeptError(f"--device-memory: {device_memory} is not a positive number of GiB")
    given = [f"train.ranks_per_source={ranks_per_source}"] if ranks_per_source else []
    cfg = load_config(config, list(overrides or []) + given)
    device = cfg.train.device
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    p = plan_memory(cfg, on_cpu=on_cpu)
    if device_memory is None:
        if on_cpu:
            raise DeptError("--device-memory: needed for a run on the CPU (the memory it may use, in GiB)")
        if not torch.cuda.is_available():
            raise DeptError("--device-memory: no CUDA device here to read it from; give the device's memory in GiB")
        device_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GiB

    def gib(n: int) -> str:
        return f"{n / GiB:,.2f}" if n >= GiB / 10 or n == 0 else f"{n / GiB:.4f}"

    r, sharded = p.ranks, p.fsdp_gathered > 0
    per = f" / {r} ranks" if sharded else ""
    name = p.variant.upper().replace("_", "-")
    where = "cpu: the host's memory, host items counted" if on_cpu else f"{device}: host items not counted"
    table = Table(title=f"memory per rank: {config.name}, {name}, {r} rank(s) per source ({p.data_parallel}), "
                        f"{p.precision}, device {where}")
    for col in ("item", "GiB", "what"):
        table.add_column(col, justify="right" if col == "GiB" else "left")
    a = p.activation
    passes = -(-p.rows_per_rank // p.micro_batch)
    rows = [("parameters", p.parameters, f"{p.params.total / 1e6:,.1f}M fp32{per}"),
            ("gradients", p.gradients, f"fp32{per}"),
            ("AdamW moments", p.optimizer, f"2 × fp32{per}")]
    if p.ddp_buckets:
        rows.append(("DDP gradient buckets", p.ddp_buckets, "beside .grad (gradient_as_bucket_view off)"))
    if sharded:
        rows.append(("FSDP gathered", p.fsdp_gathered, "table + final norm whole, 2 blocks' parameters, 1's grads"))
    rows.append(("activations", p.activations,
                 f"micro-batch {p.micro_batch} × {p.seq_len} tokens ({passes} pass{'es' if passes > 1 else ''} for "
                 f"this rank's {p.rows_per_rank} of {p.batch} sequences); {a.blocks_kept} block"
                 f"{'s' if a.blocks_kept > 1 else ''} kept"
                 + (" (checkpointing)" if cfg.train.activation_checkpointing else "")
                 + f", logits {gib(a.logits)} GiB"))
    for item, n, what in rows:
        table.add_row(item, gib(n), what)
    table.add_section()
    table.add_row("step (device)", gib(p.step_bytes), "the sum: live tensors at the step's peak, at most")
    host = [("shared state", p.shared_state, "the coordinator's fp32 body" + (" + global table" if
                                                                             p.shared_params > p.params.body else "")),
            ("outer momentum", p.outer_momentum, "Nesterov's buffers"),
            ("source state", p.source_state, "read from disk for its round (own table, AdamW moments, "
                                                 "residual: what it keeps)"),
            ("round end", p.round_end, "the update's copy and the state serialised")]
    table.add_section()
    for item, n, what in host:
        if n:
            table.add_row(f"host: {item}", gib(n), what + ("" if on_cpu else " (not counted)"))
    table.add_section()
    table.add_row("total per rank", gib(p.total_bytes),
                  "host + max(step, round end)" if on_cpu else "the step")
    table.add_row("device memory", gib(round(device_memory * GiB)), "")
    console.print(table)
    _log(f"parameters: body {p.params.body:,} + embedding {p.params.embedding:,} ({p.table_source}'s table) = "
         f"{p.params.total:,}; table sizes {p.sizes_from}")
    if not on_cpu:
        _log(f"host memory per process (not in the total): {gib(p.host_bytes)} GiB")
    if cfg.sources_per_round > 1 and r == 1:
        _log(f"one process training a round's {cfg.sources_per_round} sources (the local engine) keeps each "
             f"finished update until the round is aggregated: {gib(p.pending_update_bytes)} GiB more for each "
             "but the last")
    need, have = p.total_bytes / GiB, device_memory
    if p.fits(device_memory * GiB):
        _log(f"fits ({need:,.2f} GiB of {have:,.2f} GiB)")
        return
    _log(f"does not fit (needs {need:,.2f} GiB, has {have:,.2f} GiB)")
    raise typer.Exit(1)


@app.command()
def report(runs: Annotated[list[Path], typer.Argument(help="Run folders (seeds of one setting are grouped), and "
                                                         "adaptation or consolidation results")],
           out: Annotated[Path, typer.Option(help="Folder for the plots, report.md and report.html")]) -> None:
    """Plots and one Markdown + HTML page: bits-per-byte curves, final results with seed spread, communication,
    memory, training stability, plasticity."""
    from dept.reporting import build_report

    path = build_report(runs, out, log=_log)
    _log(f"report: {path} and {path.with_suffix('.html')}")


# ---- models people use ----------------------------------------------------------------------------------------

ModelArg = Annotated[Path, typer.Argument(help="A model folder, a run folder (with --source), or an exported folder")]
SourceOpt = Annotated[str | None, typer.Option(help="With a run folder: the source whose model to use (GLOB, TRIM, "
                                                    "STD, ACT: omit for the global table)")]
StateDirOpt = Annotated[Path | None, typer.Option(help="With a run folder of SPEC/SPEC-OPT: where the sources' own "
                                                       "tables are (a Flower site's --state-dir; default RUN/sources)")]


@app.command()
def consolidate(run_dir: Annotated[Path, typer.Argument(help="Run folder")],
                out: Annotated[Path | None, typer.Option(help="Model folder to write (default RUN_DIR/consolidated)")]
                = None,
                fraction: Annotated[float, typer.Option(help="Share of the run's pre-training steps")] = 0.15,
                steps: Annotated[int | None, typer.Option(help="Steps (instead of --fraction)")] = None,
                lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the run's peak from a "
                                                              "fresh table, half of it from the run's own)")] = None,
                batch_size: Annotated[int | None, typer.Option(help="Sequences per step (default: STD's batch)")]
                = None,
                resume: Annotated[bool, typer.Option(help="Continue an unfinished consolidation")] = False,
                device: Annotated[str, typer.Option(help="auto (the run's train.device), cpu, cuda...")] = "auto",
                ) -> None:
    """Continued pre-training: one global-vocabulary model for every source; bits per byte before and after."""
    from dept.posttrain.consolidate import consolidate as run_consolidate
    from dept.report import consolidation_table

    result = run_consolidate(run_dir, out, resume=resume, fraction=fraction, steps=steps, lr=lr,
                             batch_size=batch_size, device=device, log=_log)
    console.print(consolidation_table(result.to_dict()))


@app.command()
def adapt(runs: Annotated[list[Path], typer.Argument(help="One or more run folders (compared on the same data)")],
          source: Annotated[str, typer.Option(help="The new source: NAME=FILE[,FILE...] (globs; .txt/.md/.jsonl/"
                                                   ".parquet)")],
          steps: Annotated[int, typer.Option(help="Training steps")] = 200,
          eval_every: Annotated[int, typer.Option(help="Held-out bits per byte every this many steps")] = 20,
          freeze_body: Annotated[bool, typer.Option(help="Train the new embedding only")] = False,
          lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the run's)")] = None,
          vocab_size: Annotated[int | None, typer.Option(help="The new tokenizer's size (default: the first run's "
                                                              "per-source size)")] = None,
          seed: Annotated[int, typer.Option(help="Seed of the fresh embedding and the batch order")] = 0,
          out: Annotated[Path | None, typer.Option(help="Output folder (default RUN_DIR/adapted_NAME for one run)")]
          = None,
          device: Annotated[str, typer.Option(help="auto (the run's train.device), cpu, cuda...")] = "auto",
          ) -> None:
    """Plasticity: each run's body learns a new source (own tokenizer, fresh embedding); curves side by side."""
    from dept.posttrain.adapt import AdaptSettings
    from dept.posttrain.adapt import adapt as run_adapt
    from dept.report import plasticity_table

    if "=" not in source or not source.split("=", 1)[0] or not source.split("=", 1)[1]:
        raise DeptError(f"--source '{source}': expected NAME=FILE[,FILE...]")
    from dept.config import is_source_name

    name, files = source.split("=", 1)
    if not is_source_name(name):
        raise DeptError(f"--source '{name}=...': a source name is letters, digits, _ . - (at most 100, no leading "
                        "dot or separator)")
    result = run_adapt(runs, name, [f for f in files.split(",") if f], out,
                       AdaptSettings(steps=steps, eval_every=eval_every, freeze_body=freeze_body, lr=lr, seed=seed),
                       vocab_size, log=_log, device=device)
    console.print(plasticity_table(result.to_dict()))
    _log(f"written to {result.out}" + (f" (plot {result.plot})" if result.plot else ""))


@app.command()
def finetune(model: ModelArg,
             train: Annotated[Path, typer.Option(help="Training examples: CSV or JSONL with text, [text_pair], label")],
             eval: Annotated[Path, typer.Option(help="Evaluation examples, same format")],
             source: SourceOpt = None,
             task: Annotated[str, typer.Option(help="auto, classification or regression")] = "auto",
             epochs: Annotated[int, typer.Option(help="Passes over the training set")] = 3,
             lr: Annotated[float, typer.Option(help="Peak learning rate of the body and table")] = 1e-4,
             head_lr: Annotated[float | None, typer.Option(help="Peak learning rate of the head (default 10 × lr)")]
             = None,
             batch_size: Annotated[int, typer.Option(help="Examples per step")] = 16,
             max_len: Annotated[int | None, typer.Option(help="Tokens per example (default min(128, max_seq_len))")]
             = None,
             freeze_body: Annotated[bool, typer.Option(help="Keep the transformer body fixed")] = False,
             seed: Annotated[int, typer.Option(help="Seed of the head and the data order")] = 0,
             out: Annotated[Path | None, typer.Option(help="Model folder to save the fine-tuned model in")] = None,
             state_dir: StateDirOpt = None,
             device: Annotated[str, typer.Option(help="cpu, cuda...")] = "cpu") -> None:
    """Fine-tune a classification or regression head: accuracy and macro-F1, or Pearson and Spearman, per epoch."""
    from dept.posttrain.finetune import finetune as run_finetune
    from dept.posttrain.load import load_model
    from dept.report import finetune_table

    result = run_finetune(load_model(model, source, state_dir), train, eval, out, task=task, epochs=epochs, lr=lr,
                          head_lr=head_lr, batch_size=batch_size, max_len=max_len, seed=seed,
                          freeze_body=freeze_body, log=_log, device=device)
    console.print(finetune_table(result.to_json()))


@app.command("export")
def export(model: ModelArg,
           out: Annotated[Path, typer.Option(help="Folder to write the Hugging Face model into")],
           source: SourceOpt = None, state_dir: StateDirOpt = None) -> None:
    """Write a Hugging Face folder (Llama, tied embeddings, tokenizer files) that transformers loads offline."""
    from dept.posttrain.hf import export_folder
    from dept.posttrain.load import load_model

    path = export_folder(load_model(model, source, state_dir), out)
    _log(f"exported to {path}: AutoModelForCausalLM.from_pretrained('{path}') (needs transformers: "
         "pip install 'dept[hf]')")


@app.command()
def generate(model: ModelArg,
             prompt: Annotated[str, typer.Argument(help="Text to continue (may be empty)")] = "",
             source: SourceOpt = None,
             max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most")] = 200,
             temperature: Annotated[float, typer.Option(help="Softmax temperature (0 = greedy)")] = 0.8,
             top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0 = all)")] = 0,
             top_p: Annotated[float, typer.Option(help="Sample among the likeliest tokens covering p (1 = all)")]
             = 1.0,
             seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same text")] = 0,
             stop: Annotated[bool, typer.Option(help="Stop at the end-of-text token")] = True,
             state_dir: StateDirOpt = None,
             device: Annotated[str, typer.Option(help="cpu, cuda...")] = "cpu") -> None:
    """Continue a prompt, streamed to the terminal."""
    from dept.posttrain.generate import Sampling
    from dept.posttrain.generate import generate as run_generate
    from dept.posttrain.load import load_model

    folder = load_model(model, source, state_dir)
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
    sampling.check()
    sys.stdout.write(prompt)
    sys.stdout.flush()

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    out = run_generate(folder, prompt, sampling, on_text=show, device=device)
    sys.stdout.write("\n")
    _log(f"[{len(out.ids)} tokens{', stopped at end of text' if out.stopped_at_eos else ''}]")


flower_app = typer.Typer(no_args_is_help=True, help="Run a Flower deployment: SuperLink, one SuperNode per site, "
                         "and the run (offline; extra options go to the stock Flower command).")
app.add_typer(flower_app, name="flower")
PassThrough = {"allow_extra_args": True, "ignore_unknown_options": True}


@flower_app.command("superlink", context_settings=PassThrough)
def flower_superlink(ctx: typer.Context,
                     address: Annotated[str, typer.Option(help="HOST:PORT of its HTTP APIs")] = "0.0.0.0:9091",
                     certificates: Annotated[tuple[str, str, str] | None,
                                             typer.Option(help="TLS: CA certificate, server certificate, key")] = None,
                     insecure: Annotated[bool, typer.Option(help="No TLS (a trusted network only)")] = False,
                     node_auth: Annotated[bool, typer.Option(help="Accept only registered SuperNodes (`flwr supernode "
                                                                  "register KEY.pub`)")] = False,
                     database: Annotated[str | None, typer.Option(help="State database file (default in memory)")]
                     = None) -> None:
    """Start the SuperLink that the sites' SuperNodes and `dept flower run` connect to."""
    from dept.engines.flower_commands import exec_flower, superlink_argv

    exec_flower(superlink_argv(address, insecure, certificates, node_auth, database, list(ctx.args)))


@flower_app.command("supernode", context_settings=PassThrough)
def flower_supernode(ctx: typer.Context,
                     superlink: Annotated[str, typer.Option(help="HOST:PORT of the SuperLink")],
                     source: Annotated[str, typer.Option(help="The source(s) this site serves, comma-separated")],
                     data_dir: Annotated[str | None, typer.Option(help="This site's prepared data folder")] = None,
                     state_dir: Annotated[str | None, typer.Option(help="Where its sources' private state lives")]
                     = None,
                     port: Annotated[int, typer.Option(help="Local port of its ClientApp API")] = 9094,
                     root_certificates: Annotated[str | None, typer.Option(help="TLS: the CA certificate")] = None,
                     insecure: Annotated[bool, typer.Option(help="No TLS (a trusted network only)")] = False,
                     auth_keys: Annotated[str | None, typer.Option(help="Node authentication: private key file "
                                                                        "(its public key beside it as .pub)")] = None,
                     ) -> None:
    """Start a site's SuperNode: it trains and evaluates its own sources, on its own files."""
    from dept.engines.flower_commands import exec_flower, supernode_argv

    exec_flower(supernode_argv(superlink, source, data_dir, state_dir, port, insecure, root_certificates,
                               auth_keys, list(ctx.args)))


@flower_app.command("run")
def flower_run(config: ConfigPath, overrides: Overrides = None,
               superlink: Annotated[str, typer.Option(help="HOST:PORT of the SuperLink")] = "127.0.0.1:9091",
               root_certificates: Annotated[str | None, typer.Option(help="TLS: the CA certificate")] = None,
               insecure: Annotated[bool, typer.Option(help="No TLS (a trusted network only)")] = False,
               resume: Annotated[bool, typer.Option(help="Continue the run from its last checkpoint")] = False,
               ) -> None:
    """Submit the run to the SuperLink and follow it until it ends (the config path as the SuperLink host sees it)."""
    from dept.engines.flower_commands import run_on_superlink

    code = run_on_superlink(config, list(overrides or []), superlink, insecure, root_certificates, resume, [])
    if code:
        raise typer.Exit(code)


@app.command()
def settings() -> None:
    """Every config key, with its type, default and meaning."""
    from dept.config import setting_fields

    table = Table(title="config keys (YAML sections; override any with key.path=value)")
    for col in ("key", "type", "default", "meaning"):
        table.add_column(col)

    for key, field in setting_fields():
        ann = field.annotation
        if getattr(ann, "__args__", None) and hasattr(ann.__args__[0], "model_fields"):
            continue  # a list of sections: its fields follow as KEY[].FIELD
        default = "" if field.is_required() else field.get_default(call_default_factory=True)
        default = repr(getattr(default, "value", default)) if default != "" else ""
        table.add_row(key, getattr(ann, "__name__", str(ann)).replace("typing.", ""), default,
                      field.description or "")
    console.print(table)


def _one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (a key or value quoted from the input may hold
    them): an error is told in exactly one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def main() -> None:
    import click

    try:
        code = app(standalone_mode=False)  # usage errors come here, to be told in one line
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.NoArgsIsHelpError as err:
        print(err.ctx.get_help() if err.ctx else err.format_message())
        sys.exit(2)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "dept"
        print(f"error: {where}: {_one_line(err.format_message())} (see {where} --help)", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except DeptError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:  # a full disk, a read-only folder, a file that vanished: what was written is whole
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {_one_line(where + (err.strerror or str(err)))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
