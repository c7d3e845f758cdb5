"""The ``edgevit`` command line.

Only click is imported at module level: torch, onnx and the backends load inside the commands that use
them, so ``edgevit --help`` is instant and works on a device without torch.
"""

from __future__ import annotations

import os
import sys

import click

from edgevit.version import __version__
from edgevit.errors import EdgevitError


# Which extra brings a library a command needs (`pip install edgevit` alone is the device runtime); each
# backend's own extra is named after it (Backend.module_names).
EXTRAS = {"torch": "build", "onnx": "build", "onnxslim": "build", "nncf": "build", "sklearn": "build",
          "scipy": "build", "rasterio": "map", "matplotlib": "build", "tqdm": "map"}


def missing_extra(e: ImportError) -> str | None:
    """One line naming the extra to install for a library that is not installed, else None."""
    from edgevit.backends.base import backend_names, get_backend

    top = (getattr(e, "name", None) or "").split(".")[0]
    extras = dict(EXTRAS)
    for name in backend_names():
        extras.update({m: name for m in get_backend(name).module_names() if m not in extras})
    if top not in extras:
        return None
    return f"this needs {top}, which is not installed: pip install 'edgevit[{extras[top]}]'"


class _Group(click.Group):
    """Turns ``EdgevitError`` (bad input) and a missing optional library into one line on stderr and exit
    code 2, like a usage error."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgevitError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except ImportError as e:
            line = missing_extra(e)
            if line is None:
                raise
            click.echo(f"Error: {line}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgevit")
def cli():
    """Take vision transformers from training to validated engines on edge devices.

    \b
    Typical session:
      edgevit models                       # the model variants and their presets
      edgevit train                        # train the embedded default (SuperViT-nano on digits)
      edgevit eval runs/supervit-nano-digits.pt   # top-1 of every preset
      edgevit build --target x86-cpu       # INT8 engines for every preset, validated, in one bundle
      edgevit inspect bundles/supervit-nano-x86-cpu
      edgevit build --target jetson-orin   # Q/DQ ONNX validated here + a kit; on the Jetson:
      edgevit engine build bundles/supervit-nano-jetson-orin

    Every command takes --help. Bad input exits with code 2 and one line naming the problem.
    """


@cli.command("models")
@click.argument("name", required=False)
def models_cmd(name):
    """List the registered model variants, or show NAME's presets.

    \b
    Examples:
      edgevit models
      edgevit models supervit-deit-s
    """
    from edgevit.models import create_model, list_models, model_family
    from edgevit.build.train import preset_table

    if name is None:
        click.echo(f"{'model':<18} {'family':<10} {'params':>12} {'presets':>8} {'input':>6}")
        for n in list_models():
            m = create_model(n)
            click.echo(f"{n:<18} {model_family(n):<10} {sum(p.numel() for p in m.parameters()):>12,} "
                       f"{len(m.presets()):>8} {m.img_size:>6}")
        return
    m = create_model(name)
    click.echo(f"{name}: {sum(p.numel() for p in m.parameters()):,} parameters, input {m.in_chans}x{m.img_size}x"
               f"{m.img_size}, {m.num_classes} classes")
    click.echo(preset_table(m.presets()))


@cli.command("train")
@click.option("--model", "model", default="supervit-nano", show_default=True,
              help="Registered variant to train (see `edgevit models`), or a family: supervit, vvt.")
@click.option("--data", default=None, metavar="DIR",
              help="Image folder root with train/<class>/* and val/<class>/* (WetMapFormer: a scene raster with its "
                   "_gt labels, or a folder of them). Default: the embedded digits set / synthetic scene.")
@click.option("--out", default=None, metavar="FILE",
              help="Checkpoint path. Default: runs/<model>-<data>.pt")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--weight-decay", default=0.05, show_default=True, type=click.FloatRange(0))
@click.option("--warmup-epochs", default=2, show_default=True, type=click.IntRange(0))
@click.option("--drop-path", default=None, type=click.FloatRange(0, 1), help="Stochastic depth (variant default).")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="Data loader processes.")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch threads (default: all cores).")
@click.option("--max-steps", default=None, type=click.IntRange(1), help="Stop after this many steps (smoke runs).")
@click.option("--resolutions", default=None, callback=lambda c, p, v: _int_list(c, p, v),
              help="Preset input resolutions, e.g. 224,384,512 (VVT: multiples of 32). Default: the variant's.")
@click.pass_context
def train_cmd(ctx, model, data, out, **kw):
    """Train a model and write a checkpoint, then print every preset's validation top-1.

    SuperViT trains all its presets at once: each step runs the largest resolution at keep 1.0 (CE), a
    pruned pass at that resolution distilled from it (KL), a random smaller resolution at keep 1.0 (CE)
    and a pruned pass at that resolution distilled from it (KL). VVT: CE at the largest resolution and at
    a random smaller one. AdamW, warm-up then cosine.

    \b
    Examples:
      edgevit train                                    # SuperViT-nano on digits, ~4.5 min on 2 cores
      edgevit train --data ~/flowers --model supervit-deit-s --epochs 100
      edgevit train --model vvt                        # VVT-nano on digits (64 px; presets r32, r64)
      torchrun --nproc-per-node 2 -m edgevit train     # DistributedDataParallel (gloo on CPU)
    """
    from edgevit.models.registry import resolve
    from edgevit.build.train import TrainConfig, default_checkpoint_path, recipe_for, train

    model = resolve(model)
    for k, v in recipe_for(model).items():   # the family's recipe, where the option was not given
        if ctx.get_parameter_source(k) == click.core.ParameterSource.DEFAULT:
            kw[k] = v
    out = out or default_checkpoint_path(model, data)
    train(TrainConfig(model=model, data=data, out=out, **kw))


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", default=None, metavar="DIR",
              help="Image folder root or scene data (default: the checkpoint's data set).")
@click.option("--model", "model", default=None, help="Variant for foreign checkpoints (default supervit-deit-s).")
@click.option("--presets", default=None, help="Comma-separated preset names (default: all).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow full pickle loading. Only for files whose origin you trust: pickle can run code.")
def eval_cmd(checkpoint, data, model, presets, trust_checkpoint):
    """Validation top-1 of every preset of CHECKPOINT.

    Reads edgevit checkpoints, official SuperViT checkpoints (weights under `model`, tables
    pos_embed_list.0..3) and timm/DeiT state dicts (pos_embed becomes the largest table; the others are
    resized bicubically).
    """
    from edgevit.build.builder import BuildOptions, from_checkpoint
    from edgevit.build.train import evaluate_presets, preset_table

    got = from_checkpoint(BuildOptions(target="", checkpoint=checkpoint, data=data, model=model,
                                       trust_checkpoint=trust_checkpoint))
    m, ds = got.model, got.dataset
    chosen = m.presets() if not presets else [m.preset(p.strip()) for p in presets.split(",")]
    x, y = ds.val.arrays(got.preprocess)
    click.echo(f"{checkpoint} ({got.layout} layout) on {ds.summary()}")
    click.echo(preset_table(chosen, evaluate_presets(m, x, y, chosen)))


@cli.command("build")
@click.option("--target", "-t", required=True, metavar="NAME|FILE.yaml",
              help="Hardware profile: a name from `edgevit profiles` or a path to your own YAML file.")
@click.option("--model", "model", default=None,
              help="Variant or family (supervit, vvt); default supervit-nano, or the checkpoint's.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Weights to build from (edgevit, official SuperViT or VVT, timm/DeiT). Default: train, cached.")
@click.option("--data", default=None, metavar="DIR",
              help="Image folder root, or scene raster(s) for WetMapFormer, for calibration and validation "
                   "(default: the checkpoint's, or the embedded default).")
@click.option("--out", default=None, metavar="DIR", help="Bundle directory. Default: bundles/<model>-<target>.")
@click.option("--presets", default=None, help="Comma-separated preset names (default: all).")
@click.option("--resolutions", default=None, callback=lambda c, p, v: _int_list(c, p, v),
              help="VVT: preset input resolutions to build, e.g. 224,512,1024 (multiples of 32).")
@click.option("--batch", default=None, type=click.IntRange(1, 1024),
              help="Static engine batch (default: the profile's, 1). E.g. 256 for scene-mapping throughput.")
@click.option("--cache-dir", default=".edgevit-cache", show_default=True,
              help="Where stage outputs (training, ONNX, engines) are cached by content hash.")
@click.option("--no-checkpoint", is_flag=True, help="Leave the torch checkpoint out of the bundle.")
@click.option("--precision", default=None, metavar="LIST",
              help="Precision preference, overriding the profile's, e.g. int8,bf16,fp32 or fp32 "
                   "(FP32 is always the floor).")
@click.option("--max-top1-drop", default=None, type=click.FloatRange(0, 1),
              help="Gate: largest top-1 drop against torch FP32, as a fraction (profile default 0.01).")
@click.option("--min-agreement", default=None, type=click.FloatRange(0, 1),
              help="Gate: smallest top-1 agreement with torch FP32, as a fraction (profile default 0.99).")
@click.option("--calib-samples", default=None, type=click.IntRange(1),
              help="Calibration images for INT8 (profile default 512; the split may hold fewer).")
@click.option("--shared-weights/--per-preset-engines", "shared_weights", default=None,
              help="SuperViT: one engine per backend serving every preset, its weights stored and loaded once "
                   "(default: the profile's shared_weights, false). OpenVINO puts each preset's static graph "
                   "behind a branch (profile openvino.shared_graph: branches) or runs one dynamic-shape graph "
                   "(dynamic: less memory, slower requests), and in INT8 builds that graph calibrated on every "
                   "preset beside the branches; ONNX Runtime runs the dynamic-shape graph or every "
                   "preset's static graph over one weights file; TensorRT builds one engine with an "
                   "optimisation profile per preset (on the device).")
@click.option("--no-latency", is_flag=True,
              help="Skip the latency pass: the profile's preference order then picks each engine.")
@click.option("--request-interval-ms", default=None, type=click.FloatRange(0, 10000),
              help="How often the device serves a request (33: a 30 fps camera; 0: back to back). The latency "
                   "pass times each request after that much idle, where idle cores cost some engines more than "
                   "others (profile default: runtime.request_interval_ms, 0).")
@click.option("--memory-budget-mb", default=None, type=click.FloatRange(1),
              help="MB the device gives its resident presets: each preset's default engine is the fastest passing "
                   "one whose whole set fits, measured in fresh processes (profile default: "
                   "runtime.memory_budget_mb, no limit).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow full pickle loading of --checkpoint (trusted files only).")
def build_cmd(target, model, checkpoint, data, out, presets, resolutions, batch, cache_dir, no_checkpoint, precision,
              max_top1_drop, min_agreement, calib_samples, shared_weights, no_latency, request_interval_ms,
              memory_budget_mb, trust_checkpoint):
    """Export, quantize, validate, measure and bundle every preset for a target.

    \b
    Stages, per preset:  ONNX export (static shapes) -> onnx.checker -> onnxslim -> FP32 parity of
    ONNX Runtime against torch -> candidates per backend, in the profile's precision preference
      OpenVINO:     NNCF INT8 (transformer) | the same with its float ops in BF16 | mixed INT8 (NNCF
                    accuracy control, where INT8 fails the gate) | BF16 (both: CPUs with AVX512-BF16/AMX) | FP32
      ONNX Runtime: static QDQ INT8 | dynamic INT8 | FP32
    -> validation of every candidate (top-1, agreement with torch FP32 with its n and confidence bound)
    -> the gate drops candidates that lose accuracy beyond the noise.
    Presets go largest first: a candidate slower than FP32 there (interleaved probe) is not built for
    the smaller ones, and the manifest says why.
    Then every passing candidate of every preset and backend is timed in one interleaved pass (each
    request after --request-interval-ms idle, as the device will serve them), and each preset ships the
    fastest: a reduced precision only where it beats FP32 beyond the noise. Each preset runs by default
    on the backend measured fastest (within --memory-budget-mb for the whole set, where one is set).
    When this host is not the target, the profile's preference order decides. The manifest records every
    candidate and why one was chosen; the bundle appears only when complete.

    \b
    Examples:
      edgevit build --target x86-cpu                  # the embedded default, trained first if needed
      edgevit build -t x86-cpu --checkpoint deit_small_patch16_224.pth --data ~/imagenet-subset
      edgevit build -t my-board.yaml --presets r32-k1,r16-k0.5
      edgevit build -t x86-cpu --model vvt                      # VVT-nano, presets by resolution
      edgevit build -t x86-cpu --model wetmapformer --batch 256 # per-pixel mapping, throughput engines
      edgevit build -t x86-cpu --checkpoint vvt_tiny.pth --data ~/imagenet-100 --resolutions 224,384
    """
    from edgevit.build.builder import BuildOptions, build
    from edgevit.cleanup import install_termination_handler

    install_termination_handler()  # SIGTERM removes the partial bundle and cache entries, then exits
    build(BuildOptions(target=target, model=model, checkpoint=checkpoint, data=data, out=out,
                       presets=[p.strip() for p in presets.split(",")] if presets else None,
                       resolutions=resolutions, batch=batch, cache_dir=cache_dir,
                       trust_checkpoint=trust_checkpoint, include_checkpoint=not no_checkpoint,
                       measure=not no_latency, max_top1_drop=max_top1_drop, min_agreement=min_agreement,
                       calib_samples=calib_samples, shared_weights=shared_weights,
                       request_interval_ms=request_interval_ms, memory_budget_mb=memory_budget_mb,
                       precision=[x.strip() for x in precision.split(",") if x.strip()] if precision else None))


def _trust_engine_code(f):
    def trust(ctx, param, value):
        if value:       # read where an engine is loaded (backends.tensorrt.runner.refuse_host_code)
            os.environ["EDGEVIT_TRUST_ENGINE_CODE"] = "1"

    return click.option(
        "--trust-engine-code", is_flag=True, expose_value=False, callback=trust,
        help="Let engines run code they carry (TensorRT version-compatible plans embed TensorRT's lean runtime; "
             "same as EDGEVIT_TRUST_ENGINE_CODE=1): only for bundles you trust. Without it such an engine is "
             "refused.")(f)


@cli.command("map")
@click.argument("bundle", type=click.Path())
@click.argument("scene", type=click.Path())
@click.option("--out", required=True, metavar="FILE.tif", help="Class map to write (GeoTIFF, uint8).")
@click.option("--preview", default=None, metavar="FILE.png", help="Also write a PNG preview with a legend.")
@click.option("--tile", default=128, show_default=True, type=click.IntRange(1),
              help="Output tile side in pixels: memory is about tile^2 x bands x 256 bytes.")
@click.option("--backend", default=None, help="Engines to use (default: the bundle's primary backend).")
@click.option("--preset", default=None, help="Preset (default: the runtime's choice).")
@_trust_engine_code
def map_cmd(bundle, scene, out, preview, tile, backend, preset):
    """Classify every pixel of SCENE (GeoTIFF, .npy or .mat, H x W x bands) with a WetMapFormer BUNDLE.

    \b
    Each pixel is classified from the 8x8 patch around it (the pixel at (4, 4)), after the training fill
    (NaN and values below -1000 become -1) and a zero padding of 4 at the scene border. The class map holds
    class + 1 (0 = nodata: no valid band) and the scene's georeference. The raster is read tile by tile,
    so memory stays bounded whatever its size; a progress bar counts pixels.

    \b
    Examples:
      edgevit map bundles/wetmapformer-x86-cpu scene.tif --out classes.tif --preview classes.png
      edgevit map bundles/wetmapformer-jetson-orin SA1.mat --out SA1-classes.tif --tile 256
    """
    import json
    from pathlib import Path

    import edgevit
    from edgevit.files import output_file

    out = output_file(out, "--out", default_name=f"{Path(scene).stem}-classes.tif")
    preview = output_file(preview, "--preview") if preview else None
    with edgevit.load(bundle, backend=backend, presets=[preset] if preset else None) as rt:
        summary = rt.map_scene(scene, out, tile=tile, preset=preset, preview=preview)
    click.echo(json.dumps(summary, indent=2))


@cli.group("engine", cls=_Group)
def engine_group():
    """TensorRT engines from a bundle's on-device kit (run these on the Jetson or GPU machine)."""


@engine_group.command("build")
@click.argument("bundle", type=click.Path())
@click.option("--presets", default=None, help="Comma-separated preset names (default: every pending one).")
@click.option("--force", is_flag=True, help="Rebuild engines that are already built (after a JetPack upgrade).")
@click.option("--trtexec", "use_trtexec", is_flag=True,
              help="Build with the kit's trtexec lines instead of the TensorRT Python API.")
@click.option("--any-device", is_flag=True, help="Build even where the GPU is not the bundle's target device.")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement of the new engines.")
@click.option("--verbose", is_flag=True, help="TensorRT's builder log.")
def engine_build_cmd(bundle, presets, force, use_trtexec, any_device, no_latency, verbose):
    """Build, validate and record BUNDLE's pending TensorRT engines on this device.

    \b
    `edgevit build --target jetson-orin` on a machine without TensorRT and the Jetson's GPU validates the
    explicit-precision ONNX of every preset with ONNX Runtime and leaves the engines pending-device-build.
    On the device this command builds them (TensorRT 10.x or 11.x), validates each on the bundle's
    validation subset against the torch FP32 logits, gates it with the profile's accuracy limits, measures
    its latency and rewrites the manifest. The bundle is replaced only when all of that succeeded.

    \b
    Examples:
      edgevit engine build bundles/supervit-nano-jetson-orin
      edgevit engine build bundles/supervit-nano-jetson-orin --force      # after a JetPack upgrade
      edgevit engine build bundles/supervit-nano-desktop-gpu --trtexec
    """
    from edgevit.cleanup import install_termination_handler
    from edgevit.backends.tensorrt.device_build import DeviceBuild, engine_build

    install_termination_handler()
    how = DeviceBuild(use_trtexec=use_trtexec, measure=not no_latency, verbose=verbose,
                      log=lambda m: click.echo(m, err=True))
    summary = engine_build(bundle, presets=_names(presets), force=force, any_device=any_device, how=how)
    if summary["failed"]:
        sys.exit(1)


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 1,8") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: batch sizes must be >= 1")
    return out


def _names(value, option: str = "--presets"):
    """Comma-separated names; None where the option was not given. Given but empty is an error, not "all"."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise EdgevitError(f"{option} {value!r}: expected one or more comma-separated names; leave the option out "
                           f"for all")
    return names


@cli.command("bench")
@click.argument("bundle", type=click.Path())
@click.option("--presets", default=None, help="Comma-separated preset names (default: all).")
@click.option("--backends", default=None, help="Comma-separated backends (default: all in the bundle).")
@click.option("--batch", "batches", default="1", callback=_int_list, show_default=True,
              help="Batch sizes for throughput, e.g. 1,8.")
@click.option("--threads", default=None, type=click.IntRange(1), help="Threads for every engine (default: all cores).")
@click.option("--warmup", default=0.3, show_default=True, type=click.FloatRange(0), help="Warm-up seconds per engine.")
@click.option("--duration", default=None, type=click.FloatRange(0, min_open=True),
              help="Seconds per engine over all repeats [default: 1.5].")
@click.option("--iterations", default=None, type=click.IntRange(1), help="Inferences per engine instead of --duration.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Interleaved rounds.")
@click.option("--interval-ms", default=None, type=click.FloatRange(0),
              help="Idle before each timed request, as a device serving one every INTERVAL ms does (33: a 30 fps "
                   "camera; 0: back to back). Default: the bundle's runtime.request_interval_ms, as the build timed.")
@click.option("--accuracy", is_flag=True, help="Re-measure top-1 on the validation split (default: the manifest's).")
@click.option("--no-baseline", is_flag=True, help="Skip the torch eager FP32 baseline.")
@click.option("--power-modes", default=None, help="Jetson (root): repeat in each nvpmodel mode, e.g. MAXN,30W,15W.")
@click.option("--json", "json_out", default=None, metavar="FILE", help="[default: bench/<bundle>.json]")
@click.option("--md", "md_out", default=None, metavar="FILE", help="[default: bench/<bundle>.md]")
@click.option("--plot", "plot_out", default=None, metavar="FILE.png", help="[default: bench/<bundle>.png]")
@click.option("--no-plot", is_flag=True, help="Write no plot (also skipped, with a note, without matplotlib).")
@_trust_engine_code
def bench_cmd(bundle, presets, backends, batches, threads, warmup, duration, iterations, repeats, interval_ms, accuracy,
              no_baseline, power_modes, json_out, md_out, plot_out, no_plot):
    """Latency, throughput, memory, accuracy and energy of every preset and backend, beside torch eager.

    \b
    Per preset and backend: latency p50/p90/p99/max at batch 1, throughput at each --batch (engines have
    static shapes: batch B keeps B requests in flight; torch runs a true batch), the speed-up over torch
    eager FP32 measured in the same run, achieved GFLOP/s and the fraction of this host's measured peak,
    engine size and resident-memory growth, top-1, and energy per inference where RAPL or INA3221 exist.
    Engines are measured round-robin per repeat with a fixed thread count; a spread of more than 10 %
    between repeats is flagged.

    \b
    Examples:
      edgevit bench bundles/supervit-nano-x86-cpu
      edgevit bench bundles/supervit-nano-x86-cpu --presets r32-k1,r16-k0.5 --batch 1,8 --duration 5
      sudo edgevit bench bundles/m-jetson-orin --power-modes MAXN,30W,15W
    """
    from pathlib import Path

    from edgevit.bench.report import plot, to_markdown, to_text, write_json
    from edgevit.bench.run import BenchOptions, run_bench

    from edgevit.bundle import read_manifest
    from edgevit.files import output_file

    if duration is not None and iterations is not None:
        raise EdgevitError("give --duration or --iterations, not both")
    name = read_manifest(bundle).name
    json_out, md_out, plot_out = (output_file(p if p else Path("bench") / f"{name}.{ext}", f"--{opt}",
                                              default_name=f"{name}.{ext}")
                                  for p, ext, opt in ((json_out, "json", "json"), (md_out, "md", "md"),
                                                      (plot_out, "png", "plot")))
    if not no_plot:
        _check_plot_format(plot_out)    # before a minute of measuring, not after
    result = run_bench(BenchOptions(
        bundle=bundle, presets=_names(presets), backends=_names(backends, "--backends"), batches=batches,
        threads=threads, warmup_s=warmup, duration_s=None if iterations else (duration or 1.5),
        iterations=iterations, repeats=repeats, interval_ms=interval_ms, accuracy=accuracy, baseline=not no_baseline,
        power_modes=_names(power_modes, "--power-modes"), log=lambda m: click.echo(m, err=True)))
    for p in (json_out, md_out, plot_out):
        p.parent.mkdir(parents=True, exist_ok=True)
    click.echo(to_text(result))
    write_json(result, json_out)
    md_out.write_text(to_markdown(result))
    wrote = [str(json_out), str(md_out)]
    if _can_plot(no_plot):
        plot(result, plot_out)
        wrote.append(str(plot_out))
    click.echo(f"\nwrote {', '.join(wrote)}", err=True)


PLOT_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _check_plot_format(path) -> None:
    if path.suffix.lower() not in PLOT_FORMATS:
        raise EdgevitError(f"--plot {path}: {path.suffix or 'no extension'} is not an image format the plot can "
                           f"be written in; expected one of {', '.join(PLOT_FORMATS)} (or --no-plot)")


def _can_plot(no_plot: bool) -> bool:
    """Plots are an extra: without matplotlib the command still runs and says what it skipped."""
    if no_plot:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        click.echo("note: plot skipped: matplotlib is not installed (pip install 'edgevit[build]')", err=True)
        return False
    return True



@cli.command("simulate")
@click.argument("bundle", type=click.Path())
@click.option("--trace", required=True, type=click.Path(dir_okay=False),
              help="CSV with time_s,battery_pct,charging,cpu_load,temperature_c (empty cell: not measured).")
@click.option("--policy", default="battery", show_default=True,
              help="battery | latency | thermal | composite | fixed (parameters from the bundle's profile), "
                   "or a policy .yaml file.")
@click.option("--dry", is_flag=True, help="Use the manifest's latencies instead of running the engines.")
@click.option("--step", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Simulated seconds per decision.")
@click.option("--fps", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Frames per second the device program serves.")
@click.option("--power-w", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Active power assumed for the energy estimate.")
@click.option("--min-dwell", default=None, type=click.FloatRange(0), help="Override the profile's min_dwell_s.")
@click.option("--backend", default=None, help="Engines to use (default: the bundle's primary backend).")
@click.option("--plot", "plot_out", default=None, metavar="FILE.png", help="[default: bench/<bundle>-simulate.png]")
@click.option("--json", "json_out", default=None, metavar="FILE", help="Write the whole result as JSON.")
@click.option("--no-plot", is_flag=True, help="Write no plot (also skipped, with a note, without matplotlib).")
@_trust_engine_code
def simulate_cmd(bundle, trace, policy, dry, step, fps, power_w, min_dwell, backend, plot_out, json_out, no_plot):
    """Replay a battery/load/temperature trace against a bundle and a switching policy.

    Prints the timeline of switches with their reasons, the time spent on each preset, the mean accuracy
    and an energy estimate, and plots the signals against the chosen preset.

    \b
    A policy file:
      policy: battery            # battery | latency | thermal | composite | fixed
      thresholds: [80, 50, 20]   # percent; each crossing allows one cheaper preset
      hysteresis_pct: 5
      min_dwell_s: 30
    \b
    Example:
      edgevit simulate bundles/supervit-nano-x86-cpu --trace day.csv --policy battery --dry
    """
    import json
    from pathlib import Path

    from edgevit.bundle import read_manifest
    from edgevit.files import output_file
    from edgevit.runtime.simulate import SimOptions, plot, simulate, summary_text

    name = read_manifest(bundle).name
    plot_out = output_file(plot_out or Path("bench") / f"{name}-simulate.png", "--plot",
                           default_name=f"{name}-simulate.png")
    json_out = output_file(json_out, "--json", default_name=f"{name}-simulate.json") if json_out else None
    if not no_plot:
        _check_plot_format(plot_out)
    r = simulate(SimOptions(bundle=bundle, trace=trace, policy=policy, dry=dry, step_s=step, fps=fps,
                            power_w=power_w, min_dwell_s=min_dwell, backend=backend))
    click.echo(summary_text(r))
    if json_out:
        json_out.write_text(json.dumps(r, indent=2, default=str) + "\n")
    if _can_plot(no_plot):
        plot_out.parent.mkdir(parents=True, exist_ok=True)
        plot(r, plot_out)
        click.echo(f"\nplot: {plot_out}", err=True)


@cli.group("profiles", invoke_without_command=True)
@click.pass_context
def profiles_cmd(ctx):
    """List the hardware profiles (targets); `edgevit profiles show NAME` prints one resolved."""
    if ctx.invoked_subcommand is None:
        from edgevit.build.profiles import list_profiles, load_profile

        for name in list_profiles():
            p = load_profile(name)
            click.echo(f"{name:<18} {p.backend:<12} {','.join(p.precision):<15} {p.description}")


@profiles_cmd.command("show")
@click.argument("target")
def profiles_show(target):
    """Print TARGET (a name or a YAML path) with every default filled in."""
    import yaml

    from edgevit.build.profiles import load_profile

    click.echo(yaml.safe_dump(load_profile(target).to_dict(), sort_keys=False).rstrip())


@cli.command("inspect")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check every file's sha256.")
@click.option("--candidates", is_flag=True, help="List every build candidate with its gate figures and latency.")
def inspect_cmd(bundle, as_json, verify, candidates):
    """Describe a bundle: model, target, tools, and every preset's engines and accuracy."""
    import json

    from edgevit.bundle import read_manifest, verify_files
    from edgevit.manifest_report import choices, preset_header, preset_rows, summary_lines, text_table

    manifest = read_manifest(bundle)
    if verify:
        verify_files(bundle, manifest)
    m = manifest.to_dict()    # the report's tables render the manifest's JSON form, as report.md does
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    click.echo("\n".join(summary_lines(m)))
    click.echo(f"files      {len(manifest.files)} listed" + (", all sha256 verified" if verify else ""))
    click.echo("")
    click.echo(text_table(preset_header(m), preset_rows(m)))
    for line in choices(m, detail=candidates):
        click.echo(f"choice: {line}")


def main():
    from edgevit.cleanup import finish

    code = 1
    try:
        cli(prog_name="edgevit")
        code = 0
    except SystemExit as e:
        code = e.code
        raise
    finally:
        finish(code)   # the work is done: nothing a library left running may hold the exit


if __name__ == "__main__":
    main()
