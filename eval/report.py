"""`tokworld report`: one self-contained HTML page showing what a run learned.

Sections: the run's settings and final metrics; training curves of every stage under the run
(`history.json` files, and the histories checkpoints keep: tokenizer, world model, policy), and
returns against real env steps (an online run's learning curve); open-loop fidelity over the
horizon; the tokenizer's reconstructions of held-out frames; imagined episodes side by side
with the real ones, as GIFs. For a vector run (vector codec): normalised MSE instead of PSNR,
the codec's own error instead of reconstructions, and each imagined window's dimensions plotted
over the real ones instead of GIFs.
Images are inline (base64), so the page is one file that opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from tokworld.errors import TokWorldError
from tokworld.eval.fidelity import evaluate_fidelity, held_out_dataset
from tokworld.eval.media import pyplot, side_by_side, write_gif
from tokworld.eval.plots import plot_dimensions, plot_fidelity
from tokworld.eval.tokenizer_metrics import evaluate_tokenizer
from tokworld.eval.vector_fidelity import codec_figures
from tokworld.folders import atomic_file, read_json
from tokworld.run import load_run

CONFIG_FILES = (
    "pretrain.json",
    "online.json",
    "tokenizer/config.json",
    "world_model/config.json",
    "policy/config.json",
    "metrics.json",
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
img { image-rendering: pixelated; max-width: 100%; }
figure { display: inline-block; margin: .5em 1em .5em 0; }
figcaption { font-size: .85em; color: #555; }
.note { color: #666; font-style: italic; }
.row { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
"""


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    pyplot().close(fig)
    return buffer.getvalue()


def _img(data: bytes, mime: str, alt: str) -> str:
    """An inline image; a broken one reports itself on the console (the test looks for that).

    The handler is JavaScript inside an HTML attribute: `alt` goes in as a JSON string literal
    (valid JavaScript), then the whole handler is escaped for the attribute.
    """
    src = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    onerror = f"console.error({json.dumps(f'report image failed to load: {alt}')})"
    return f'<img src="{src}" alt="{html.escape(alt)}" onerror="{html.escape(onerror)}">'


def _plain(text: str) -> str:
    """`text` for a matplotlib title or label, shown as typed: `$...$` is not math."""
    return text.replace("$", r"\$")


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested dicts -> one level of dotted keys; lists of dicts (histories) are left out."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not (isinstance(v, list) and v and isinstance(v[0], dict)):
            out[f"{prefix}{k}"] = v
    return out


def _table(data: dict) -> str:
    def fmt(v):
        if isinstance(v, list):
            return f"[{', '.join(str(fmt(x)) for x in v)}]"
        return f"{v:.4g}" if isinstance(v, float) else v

    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(fmt(v)))}</td></tr>"
        for k, v in _flatten(data).items()
    )
    return f"<table>{rows}</table>"


def config_section(run: Path) -> str:
    """Settings and final metrics: one table per JSON file the run holds."""
    tables = [
        f"<div><h3>{html.escape(name)}</h3>{_table(read_json(run / name, 'run file'))}</div>"
        for name in CONFIG_FILES
        if (run / name).exists()
    ]
    return f"<h2>Configuration and final metrics</h2><div class='row'>{''.join(tables)}</div>"


def curve_figure(history: list[dict], title: str) -> bytes | None:
    """PNG of one stage's history, train (solid) and eval/ (dashed) alike.

    Panels: losses (log scale); PSNR; fractions (accuracies, codebook usage); returns (the
    policy's imagined and lambda returns). Empty ones are left out.
    """
    keys = sorted({k for row in history for k in row if k not in ("step", "env_steps")})
    base = lambda k: k.removeprefix("eval/")  # noqa: E731
    panels = [
        ("loss", [k for k in keys if base(k).endswith("loss")]),
        ("PSNR (dB)", [k for k in keys if base(k).endswith("psnr")]),
        ("fraction", [k for k in keys if base(k).endswith(("acc", "usage"))]),
        ("return", [k for k in keys if base(k).endswith("return")]),
    ]
    panels = [(label, group) for label, group in panels if group]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    colours = {name: f"C{i % 10}" for i, name in enumerate(sorted({base(k) for k in keys}))}
    for ax, (label, group) in zip(axes[0], panels, strict=True):
        for key in group:
            pts = [(r["step"], r[key]) for r in history if key in r and "step" in r]
            style = "--" if key.startswith("eval/") else "-"
            ax.plot(*zip(*pts, strict=True), style, label=_plain(key), color=colours[base(key)])
        if label == "loss":
            ax.set_yscale("log")
        ax.set(xlabel="optimizer step", ylabel=label)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    fig.suptitle(_plain(title))
    fig.tight_layout()
    return _png(fig)


def return_figure(rows: list[dict], title: str) -> bytes | None:
    """PNG of every `*return*` entry of `rows` (nested keys dotted) against their `env_steps`."""
    rows = [_flatten(r) for r in rows if _number(r.get("env_steps"))]
    keys = sorted({k for r in rows for k in r if "return" in k and _number(r[k])})
    if not keys:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in keys:
        pts = [(r["env_steps"], r[key]) for r in rows if _number(r.get(key))]
        ax.plot(*zip(*pts, strict=True), marker=".", label=_plain(key))
    ax.set(xlabel="real env steps", ylabel="return", title=_plain(title))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def histories(run: Path) -> list[tuple[str, list[dict]]]:
    """(stage, rows) of each training history under the run, once each.

    From `history.json` files, and from checkpoints (`state.json` extras) of stages that write
    none (the policy); named by the stage's directory relative to the run.
    """
    found = []
    for path in sorted(run.rglob("history.json")):
        found.append((path.parent, _history(read_json(path, "training history", list), path)))
    for path in sorted(run.rglob("state.json")):  # train states', and saved datasets' own
        stage = path.parent.parent if path.parent.name == "train_state" else path.parent
        extra = read_json(path, "state file").get("extra")
        if (
            isinstance(extra, dict)
            and extra.get("history")
            and not (stage / "history.json").exists()
        ):
            found.append((stage, _history(extra["history"], path)))
    unique: list[tuple[str, list[dict]]] = []
    for stage, rows in found:
        if rows and all(rows != seen for _, seen in unique):
            unique.append((str(stage.relative_to(run)), rows))
    return unique


def _history(rows, path: Path, nested: bool = False) -> list[dict]:
    """`rows`, read from `path`, checked to be a history: a list of JSON objects of numbers
    (or null); `nested`: of any JSON values (an online run's epochs). One line if not."""
    for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
        bad = None if isinstance(row, dict) else row
        if not nested and bad is None:
            bad = next((v for v in row.values() if not _number(v) and v is not None), None)
        if bad is not None or not isinstance(rows, list):
            raise TokWorldError(
                f"cannot read the training history in {path}: entry {i} holds {bad!r}, "
                "expected a list of JSON objects of numbers"
            )
    return rows


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def curves_section(run: Path) -> str:
    """Training curves of every history under the run, and returns against real env steps
    (from histories that log `env_steps`, and the learning curve of an online run)."""
    stages = histories(run)
    path = run / "metrics.json"
    metrics = read_json(path, "run metrics") if path.exists() else {}
    curve = [
        {"env_steps": p.get("env_steps"), "eval return": p.get("return")}
        for p in _history(metrics.get("learning_curve", []), path)
    ]
    online = curve + _history(metrics.get("history", []), path, nested=True)
    stages_and_online = [*stages, ("metrics.json", online)]
    figures = [(name, curve_figure(rows, name)) for name, rows in stages]
    figures += [(name, return_figure(rows, f"{name}: return")) for name, rows in stages_and_online]
    parts = [f"<figure>{_img(png, 'image/png', name)}</figure>" for name, png in figures if png]
    if not parts:
        parts = ['<p class="note">no training history under this run</p>']
    return "<h2>Training curves</h2>" + "".join(parts)


def _gif(frames: np.ndarray) -> bytes:

    with tempfile.TemporaryDirectory() as tmp:
        return write_gif(frames, Path(tmp) / "clip.gif", scale=3).read_bytes()


def _dimensions(lines: list[tuple], title: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return plot_dimensions(lines, Path(tmp) / "dims.png", title).read_bytes()


def fidelity_section(result: dict, rollouts, videos: int) -> str:
    """The fidelity plot, figures at a few horizons, and real | imagined GIFs (vectors: a plot
    of each window's dimensions, real and imagined)."""

    with tempfile.TemporaryDirectory() as tmp:
        plot = plot_fidelity(result, Path(tmp) / "fidelity.png").read_bytes()
    summary = {
        "context": result["context"],
        "horizon": result["horizon"],
        "windows": result["windows"],
        "at_horizon": result["at_horizon"],
        "reward": result["reward"],
        "end": result["end"],
    }
    r = rollouts
    vector = r.imagined_frames.ndim == 3
    layout = "solid: real; dashed: imagined" if vector else "left: real; right: imagined"
    parts = [
        "<h2>Open-loop fidelity</h2>",
        f"<figure>{_img(plot, 'image/png', 'fidelity')}",
        "</figure>",
        _table(summary),
        "<h2>Imagined vs real episodes</h2>",
        f'<p class="note">{layout} from the same context, replaying the real actions (the '
        "first step is the last real context observation)</p>",
    ]
    for e in range(min(videos, len(r.imagined_frames))):
        n = int(r.frame_valid[e].sum())
        real = r.reconstruction if r.real_frames is None else r.real_frames
        shown = np.concatenate([r.start[e : e + 1], real[e, :n]])
        imagined = np.concatenate([r.start[e : e + 1], r.imagined_frames[e, :n]])
        if vector:
            lines = [("real", shown, {}), ("imagined", imagined, {"linestyle": "--"})]
            media = _img(_dimensions(lines, f"window {e}"), "image/png", f"episode {e}")
        else:
            media = _img(_gif(side_by_side(shown, imagined)), "image/gif", f"episode {e}")
        parts.append(
            f"<figure>{media}<figcaption>window {e}: {n} imagined steps</figcaption></figure>"
        )
    return "".join(parts)


def tokenizer_section(tokenizer, ds) -> str:
    """Held-out reconstruction scores and a grid of originals over reconstructions; for a
    vector codec, its settings and reconstruction error."""
    if tokenizer.observation == "vector":
        return (
            "<h2>Vector codec</h2><p class='note'>each dimension cut into bins; the error of "
            "decoding a held-out observation's codes (normalised MSE, MAE per dimension) is the "
            f"floor of the fidelity figures</p>{_table(codec_figures(tokenizer, ds))}"
        )

    if "observation" not in ds.column_names:
        return '<h2>Tokenizer</h2><p class="note">the dataset holds codes, not frames</p>'
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate_tokenizer(tokenizer, ds, max_frames=256, grid=Path(tmp) / "g.png")
        grid = (Path(tmp) / "g.png").read_bytes()
    return (
        "<h2>Tokenizer reconstructions</h2><p class='note'>rows of held-out frames, each "
        f"over its reconstruction</p><figure>{_img(grid, 'image/png', 'reconstructions')}"
        f"</figure>{_table(metrics)}"
    )


def write_report(
    run: str | Path,
    out: str | Path,
    dataset: str | None = None,
    fidelity: str | None = None,
    videos: int = 4,
    device: str = "cpu",
    **fidelity_options,
) -> dict:
    """Write the page about `run` to `out`; return a summary.

    Real episodes come from `dataset`, else from the run's held-out episodes (without either,
    the page has no fidelity or samples). `fidelity` reuses an `eval-model --json` output for the
    plot; otherwise `evaluate_fidelity(**fidelity_options)` runs. The GIFs always come from
    fresh rollouts.
    """

    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise TokWorldError(f"run directory {run} does not exist")
    if videos < 0:
        raise TokWorldError(f"videos must be >= 0, got {videos}")
    result = _read_fidelity(fidelity) if fidelity else None
    world_model, tokenizer = load_run(run, device)
    sections = [config_section(run), curves_section(run)]
    try:
        ds, described = held_out_dataset(run, dataset, tokenizer)
    except TokWorldError as e:
        if dataset is not None:
            raise
        ds, described = None, str(e)
    if ds is None:
        sections.append(
            f'<h2>Fidelity and samples</h2><p class="note">{html.escape(described)}</p>'
        )
    else:
        if result is not None:
            options = {
                **fidelity_options,
                "windows": max(videos, 1),
                "context": result["context"],
                "horizon": result["horizon"],
            }
            rollouts = evaluate_fidelity(world_model, tokenizer, ds, **options)[1]
        else:
            result, rollouts = evaluate_fidelity(world_model, tokenizer, ds, **fidelity_options)
        sections += [
            f"<p>Evaluated on {html.escape(described)}.</p>",
            fidelity_section(result, rollouts, videos),
            tokenizer_section(tokenizer, ds),
        ]
    title = f"tokworld run {run.resolve().name}"
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(str(run.resolve()))}"
        f"</p>{''.join(sections)}</body></html>"
    )
    with atomic_file(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"report": str(out), "bytes": len(page), "dataset": described}


def _read_fidelity(path: str) -> dict:
    keys = {"per_step": dict, "at_horizon": dict, "context": int, "horizon": int,
            "windows": int, "reward": dict, "end": dict}  # fmt: skip
    try:
        return read_json(path, "fidelity JSON", keys=keys)
    except TokWorldError as e:
        raise TokWorldError(f"{e}: it is not the output of `tokworld eval-model --json`") from None
