"""The results table (docs/results.md) and its plot, regenerated from the reference checkpoints.

For one reference model (benchmarks/train_reference.py) and each method row below, at 20 %, 30 % and 40 % fewer
FLOPs: `ssmprune prune --ratio R <flags>` (training-free), then `ssmprune finetune` for 1 and for 5 epochs from the
pruned model; the dense model is fine-tuned the same way (with itself as the teacher) as the control. Every model
is evaluated on the same test images, and the per-image results are kept, so each difference is reported with a
paired interval: a bootstrap 95 % interval over the images and the exact McNemar p-value, against our default
(`ssmprune prune --ratio R`) at the same FLOPs and stage, and ours against the equally fine-tuned dense model.
`ssmprune bench --dtype bf16` measures each pruned model's throughput beside its dense model in one run.

    # on the GPU, one reference at a time, resumable (cells already in the summary are skipped):
    python benchmarks/results.py run --family vim --reference runs/reference/vim/model.safetensors \
        --data ../shared/data/cifar10-jpeg.tar.gz --work runs/results --summary runs/results/vim.json \
        [--rows ours naive ...] [--ratios 0.2 0.3 0.4] [--epochs 1 5] [--max-minutes 9]
    # anywhere, from the summaries:
    python benchmarks/results.py render runs/results/vim.json runs/results/plainmamba.json \
        runs/results/groupmamba.json --doc docs/results.md --plot docs/results.png

Every command a cell ran is stored in the summary beside its numbers (and printed in docs/results.md). Each
command runs in this process through the CLI's own entry point, so it is exactly what a user would type. `run`
exits with 0 when every requested cell is done and 10 when --max-minutes stopped it (run it again). `--small
--device cpu` runs a few images through every stage: a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shlex
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_reference import sha256  # noqa: E402  (the checkpoints' digest, as training recorded it)

RATIOS = (0.2, 0.3, 0.4)
EPOCHS = (1, 5)
# key → (label, `ssmprune prune` flags, recipe written beside the cell or None). Rows marked "packed" are the peers
# as their released code runs them (no alignment); "+ alignment" rows give the peer's choice our alignment.
ROWS: Dict[str, Tuple[str, List[str], Optional[Dict[str, Any]]]] = {
    "ours": ("ours (default): top-k by clip score + alignment", [], None),
    "naive": ("naive packing (ToP-ViM's released code)", ["--align", "none"], None),
    "random": ("random scores + alignment", ["--score", "random"], None),
    "mtr": ("MTR score (Δ), packed", ["--score", "mtr", "--align", "none"], None),
    "mtr_aligned": ("MTR score (Δ) + alignment", ["--score", "mtr"], None),
    "rmeeto": ("R-MeeTo merge, every 2nd block, packed",
               ["--method", "merge", "--merge-layers", "alternate", "--align", "none"], None),
    "rmeeto_aligned": ("R-MeeTo merge, every 2nd block + alignment",
                       ["--method", "merge", "--merge-layers", "alternate"], None),
    "fambav": ("Famba-V merge, every block, unweighted, packed",
               ["--method", "merge", "--merge-layers", "all", "--align", "none"],
               {"prune": {"merge": {"weighting": "mean"}}}),
    "evit": ("EViT: top-k + one fused token, packed", ["--method", "fuse", "--align", "none"], None),
    "evit_aligned": ("EViT: top-k + one fused token + alignment", ["--method", "fuse"], None),
}
FAMILY_TITLES = {"vim": "Vim (Vim-T width, 12 blocks, 257 tokens)",
                 "plainmamba": "PlainMamba (L1 width, 12 layers, 256 tokens)",
                 "groupmamba": "GroupMamba (48/96/144/192 wide, 2/4/9/2 deep, 64 px: 16×16 tokens in stage 1)"}
PENDING = "awaiting the GPU run"


# ================================================================================================ statistics
def bits(correct: torch.Tensor) -> str:
    return "".join("1" if c else "0" for c in correct.tolist())


def unbits(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


def mcnemar_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact two-sided McNemar test on paired per-image results (the binomial test on the discordant pairs)."""
    n01 = int((a & ~b).sum())
    n10 = int((~a & b).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


def paired_difference(a: torch.Tensor, b: torch.Tensor, resamples: int = 2000, seed: int = 0
                      ) -> Dict[str, float]:
    """top-1 of b minus top-1 of a (points), a bootstrap 95 % interval over the images, McNemar's p."""
    if a.shape != b.shape:
        raise ValueError("paired results need the same images")
    n = a.numel()
    af, bf = a.float(), b.float()
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for start in range(0, resamples, 250):
        idx = torch.randint(0, n, (min(250, resamples - start), n), generator=gen)
        diffs.append((bf[idx].mean(1) - af[idx].mean(1)) * 100)
    d = torch.cat(diffs)
    lo, hi = torch.quantile(d, torch.tensor([0.025, 0.975])).tolist()
    return {"diff": float(bf.mean() - af.mean()) * 100, "lo": lo, "hi": hi, "p": mcnemar_p(a, b)}


# ================================================================================================ running
def quote(args: Sequence[Any]) -> str:
    return "ssmprune " + " ".join(shlex.quote(str(a)) for a in args)


def ssmprune(args: Sequence[Any]) -> str:
    """Run one CLI command in this process; its stdout (the --json document) back, or RuntimeError."""
    import typer

    from ssmprune_cli import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = typer.main.get_command(cli.app).main([str(a) for a in args], prog_name="ssmprune",
                                                     standalone_mode=False)
    sys.stderr.write(err.getvalue())
    if code not in (None, 0):
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        raise RuntimeError(f"exit {code}: {last}")
    return out.getvalue()


class Runner:
    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.summary_path: Path = args.summary
        self.summary: Dict[str, Any] = (json.loads(self.summary_path.read_text()) if self.summary_path.exists()
                                        else {})
        self.work: Path = args.work
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # ---------------------------------------------------------------------------------------- bookkeeping
    def save(self) -> None:
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary, indent=1) + "\n")
        tmp.replace(self.summary_path)

    def out_of_time(self) -> bool:
        return bool(self.args.max_minutes) and (time.perf_counter() - self.started) / 60 > self.args.max_minutes

    def data(self) -> Tuple[Path, Path]:
        root = self.work / "cifar10"
        if not (root / "test").is_dir():
            if self.args.data.is_dir():
                return self.args.data / "train", self.args.data / "test"
            self.work.mkdir(parents=True, exist_ok=True)
            with tarfile.open(self.args.data) as tar:
                tar.extractall(self.work, filter="data")
        return root / "train", root / "test"

    def test_set(self):
        from ssmprune_cli.data.images import find_images

        _, test = self.data()
        return find_images(test, limit=self.args.test_images, seed=0)

    def correct(self, model_path: Path) -> Tuple[torch.Tensor, str]:
        """Per-image top-1 of a model file on the test images (what `ssmprune eval --val TEST` reports)."""
        from ssmprune_cli.io.load import load_checkpoint
        from ssmprune_cli.runtime import pick_device, predictions

        device = pick_device(self.device)
        model = load_checkpoint(model_path).model.to(device).eval()
        images = self.test_set()
        pred = predictions(model, images, 256, device, torch.float32)
        labels = torch.tensor(images.labels)
        cmd = quote(["eval", model_path, "--val", self.data()[1]]
                    + (["--limit", self.args.test_images] if self.args.test_images else []))
        return pred == labels, cmd

    def common(self) -> List[Any]:
        return (["--device", self.device] if self.args.device else []) + ["--no-progress"]

    def finetune_args(self, model: Path, out: Path, epochs: int, teacher: Optional[Path] = None) -> List[Any]:
        train, _ = self.data()
        out.parent.mkdir(parents=True, exist_ok=True)  # `ssmprune finetune` keeps its resume state beside OUT
        args = ["finetune", model, "--train", train, "--epochs", epochs, "--batch-size", self.args.ft_batch_size,
                "-o", out, "--force", "--json", *self.common()]
        if teacher is not None:
            args[2:2] = ["--teacher", teacher]
        if self.args.train_images:
            args += ["--train-images", self.args.train_images]
        return args

    def stage(self, record: Dict[str, Any], key: str, model: Path) -> None:
        correct, cmd = self.correct(model)
        record[key] = {"top1": float(correct.float().mean()) * 100, "correct": bits(correct), "eval": cmd}

    # ---------------------------------------------------------------------------------------- the run
    def run(self) -> int:
        a = self.args
        s = self.summary
        ref = a.reference
        s.setdefault("family", a.family)
        s.setdefault("reference", {"path": str(ref), "sha256": sha256(ref)})
        if s["reference"]["sha256"] != sha256(ref):
            raise SystemExit(f"{self.summary_path} was made from another checkpoint than {ref}")
        s.setdefault("settings", {"test_images": a.test_images, "calib_images": a.calib_images,
                                  "ft_batch_size": a.ft_batch_size, "train_images": a.train_images})
        s.setdefault("environment", {"torch": torch.__version__, "device": _device_name(self.device)})
        dense = s.setdefault("dense", {})
        if "tf" not in dense:
            self.stage(dense, "tf", ref)
            self.save()
        for e in a.epochs:
            key = f"ft{e}"
            if key in dense or self.out_of_time():
                continue
            out = self.work / a.family / "dense" / key
            args = self.finetune_args(ref, out, e, teacher=ref)
            ssmprune(args)
            self.stage(dense, key, out / "model.safetensors")
            dense[key]["command"] = quote(args)
            self.save()
        cells = s.setdefault("cells", {})
        for ratio in a.ratios:
            for row in a.rows:
                if self.out_of_time():
                    break
                self.cell(cells.setdefault(f"{row}@{ratio:g}", {"row": row, "ratio": ratio}))
        self.save()
        done = all(_cell_done(cells.get(f"{r}@{q:g}", {}), a.epochs) for r in a.rows for q in a.ratios) and \
            all(f"ft{e}" in dense for e in a.epochs)
        print(f"{self.summary_path}: {'complete' if done else 'partial: run again to go on'}", file=sys.stderr)
        return 0 if done else 10

    def cell(self, cell: Dict[str, Any]) -> None:
        a = self.args
        if cell.get("error") or _cell_done(cell, a.epochs):
            return
        label, flags, recipe = ROWS[cell["row"]]
        folder = self.work / a.family / f"{cell['row']}@{cell['ratio']:g}"
        tf = folder / "tf"
        train, _ = self.data()
        args = ["prune", a.reference, "--ratio", cell["ratio"], *flags, "--calib", train, "--calib-images",
                a.calib_images, "-o", tf, "--force", "--json", *self.common()]
        if recipe is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "recipe.yaml").write_text(json.dumps(recipe) + "\n")  # JSON is YAML
            args += ["--recipe", folder / "recipe.yaml"]
            cell["recipe"] = recipe
        if "prune" not in cell or not (tf / "model.safetensors").exists():
            try:
                report = json.loads(ssmprune(args))
            except Exception as exc:  # an unreachable ratio for this method and model is a result, not a crash
                cell["error"] = " ".join(str(exc).split()) or type(exc).__name__
                cell["command"] = quote(args)
                self.save()
                return
            f = report["flops"]
            cell["prune"] = {"command": quote(args), "gmacs": f["pruned_gmacs"], "dense_gmacs": f["dense_gmacs"],
                             "reduction": f["reduction"], "points": report["pruning"]["points"]}
            self.save()
        if "tf" not in cell:
            self.stage(cell, "tf", tf / "model.safetensors")
            self.save()
        if "bench" not in cell and not self.out_of_time():
            bench = ["bench", tf / "model.safetensors", "--dtype", a.bench_dtype, "--batch", a.bench_batch,
                     "--json"] + (["--device", self.device] if a.device else []) + (
                     ["--repeats", "1", "--warmup", "0"] if a.small else [])
            result = json.loads(ssmprune(bench))
            m, b = result["models"]["model"], result["models"]["baseline"]
            cell["bench"] = {"command": quote(bench), "images_per_s": m["throughput"]["images_per_s"],
                             "dense_images_per_s": b["throughput"]["images_per_s"],
                             "speedup": result["comparison"]["throughput_speedup"],
                             "device": result["environment"].get("device", self.device)}
            self.save()
        for e in a.epochs:
            key = f"ft{e}"
            if key in cell or self.out_of_time():
                continue
            out = folder / key
            ft = self.finetune_args(tf / "model.safetensors", out, e)
            ssmprune(ft)
            self.stage(cell, key, out / "model.safetensors")
            cell[key]["command"] = quote(ft)
            self.save()


def _cell_done(cell: Dict[str, Any], epochs: Sequence[int]) -> bool:
    return bool(cell.get("error")) or ("tf" in cell and "bench" in cell and all(f"ft{e}" in cell for e in epochs))


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else device


# ================================================================================================ rendering
def _fmt_diff(d: Optional[Dict[str, float]]) -> str:
    if d is None:
        return ""
    return f" ({d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}], p={d['p']:.2g})"


def table_rows(summary: Dict[str, Any], ratio: float, epochs: Sequence[int]) -> List[List[str]]:
    """One family at one ratio: a row per method, [method, flags, FLOPs cut, img/s, tf, ft...]."""
    dense = summary.get("dense", {})
    cells = summary.get("cells", {})
    ours = cells.get(f"ours@{ratio:g}", {})
    stages = ["tf"] + [f"ft{e}" for e in epochs]
    out = []
    benches = sorted(c["bench"]["dense_images_per_s"] for c in cells.values() if c.get("bench"))
    dense_speed = f"{benches[len(benches) // 2]:.0f} (1×)" if benches else ""
    out.append(["dense (control: fine-tuned alike)", "", "0 %", dense_speed, *[_top1(dense.get(k)) for k in stages]])
    for key, (label, flags, recipe) in ROWS.items():
        cell = cells.get(f"{key}@{ratio:g}")
        shown_flags = " ".join(flags) + (" --recipe (merge.weighting: mean)" if recipe else "")
        if cell is None:
            out.append([label, f"`{shown_flags}`" if shown_flags else "", "", "", *["" for _ in stages]])
            continue
        if cell.get("error"):
            out.append([label, f"`{shown_flags}`" if shown_flags else "", "—", "—",
                        *[f"not run: {cell['error'][:80]}" if i == 0 else "" for i in range(len(stages))]])
            continue
        p = cell.get("prune", {})
        b = cell.get("bench")
        row = [label, f"`{shown_flags}`" if shown_flags else "", f"{p['reduction'] * 100:.1f} %" if p else "",
               f"{b['images_per_s']:.0f} ({b['speedup']:.2f}×)" if b else ""]
        for k in stages:
            st = cell.get(k)
            if st is None:
                row.append("")
                continue
            if key == "ours":  # against the dense model treated alike (training-free: the dense model itself)
                other = dense.get(k)
                diff = paired_difference(unbits(other["correct"]), unbits(st["correct"])) if other else None
                row.append(f"**{st['top1']:.2f}**{_fmt_diff(diff)}")
            else:
                base = ours.get(k)
                diff = paired_difference(unbits(base["correct"]), unbits(st["correct"])) if base else None
                mark = " ▲" if diff and diff["lo"] > 0 else ""
                row.append(f"{st['top1']:.2f}{_fmt_diff(diff)}{mark}")
        out.append(row)
    return out


def _top1(stage: Optional[Dict[str, Any]]) -> str:
    return f"{stage['top1']:.2f}" if stage else ""


def render(summaries: Dict[str, Dict[str, Any]], ratios: Sequence[float], epochs: Sequence[int],
           plot_name: str = "results.png") -> str:
    lines = ["# Results: our pruning against the peers' methods at equal FLOPs", ""]
    complete = summaries and all(_summary_complete(s, ratios, epochs) for s in summaries.values())
    if not complete:
        lines += [f"> **The numbers await the GPU run.** This page is generated by `benchmarks/results.py render` "
                  "from the summaries the GPU runs write; empty cells have not been measured yet. The commands "
                  "below produce them.", ""]
    lines += [
        "Each table: one reference model (trained by `benchmarks/train_reference.py`, CIFAR-10, 256 patch "
        "tokens), one FLOPs budget. Every method is solved for the same `--ratio` (fvcore GMACs within 1 % of the "
        "target; the column shows the achieved cut), evaluated on the same 10,000 test images training-free and "
        "after 1 and 5 epochs of `ssmprune finetune` (distillation from the dense model). The dense row is the "
        "dense model, and the dense model fine-tuned the same way (with itself as the teacher): the control.",
        "",
        "Accuracy cells: top-1, then in brackets the paired difference in points with its bootstrap 95 % interval "
        "over the images and the exact McNemar p-value: against **ours at the same FLOPs and stage** for every "
        "peer row (▲: the peer is better beyond the interval), and against the **equally treated dense model** for "
        "ours. img/s: `ssmprune bench --dtype bf16` throughput (batch 256) and its ratio to the dense model "
        "measured in the same run. Methods: docs/pruning.md §1b; \"packed\" rows run the peer as its released "
        "code does (no alignment), \"+ alignment\" rows add ours.",
        "",
    ]
    for family in ("vim", "plainmamba", "groupmamba"):
        s = summaries.get(family, {"family": family})
        lines += [f"## {FAMILY_TITLES[family]}", ""]
        dense = s.get("dense", {}).get("tf")
        ref = s.get("reference")
        lines.append(f"Reference: `{ref['path']}` (SHA-256 `{ref['sha256'][:16]}…`), dense top-1 "
                     f"{dense['top1']:.2f} on {len(dense['correct'])} test images." if ref and dense else
                     f"Reference: {PENDING}.")
        lines.append("")
        stage_names = ["training-free"] + [f"{e} epoch{'s' if e > 1 else ''}" for e in epochs]
        for ratio in ratios:
            lines += [f"### {ratio * 100:.0f} % fewer FLOPs", "",
                      "| method | flags | FLOPs cut | img/s (× dense) | " + " | ".join(stage_names) + " |",
                      "|---" * (4 + len(stage_names)) + "|"]
            for row in table_rows(s, ratio, epochs):
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines += ["## Notes", "",
              "- GroupMamba at 64 px spends about a third of its FLOPs outside the blocks (stem, downsampling, the "
              "class block and heads), so 40 % fewer FLOPs means removing about 60 % of the blocks' FLOPs; cells a "
              "method cannot reach at a budget are marked \"not run\" with the reason (merging removes at most half "
              "of the tokens at each point).",
              "- One seed, one reference model per family; the intervals cover the test images, not retraining.",
              "- Throughput is one GPU run; dense and pruned are timed in the same `ssmprune bench` call, so read the "
              "ratio.", ""]
    lines += ["## Plot", "", f"![accuracy against FLOPs and throughput]({plot_name})", "",
              "Top-1 against fvcore GMACs (left) and measured img/s (right), one line per method over the three "
              "budgets, the dense model as a point; top row training-free, bottom row after "
              f"{max(epochs)} epochs.", ""]
    lines += commands_section(summaries, ratios, epochs)
    return "\n".join(lines) + "\n"


def _summary_complete(s: Dict[str, Any], ratios, epochs) -> bool:
    cells = s.get("cells", {})
    return all(_cell_done(cells.get(f"{r}@{q:g}", {}), epochs) for r in ROWS for q in ratios)


def commands_section(summaries, ratios, epochs) -> List[str]:
    lines = ["## Commands", "",
             "On the GPU machine the data and every state travel with the call (64 MiB in all; files come back "
             "through $OUT, at most 8 of 16 MiB): copy `../shared/data/cifar10-jpeg.tar.gz` to `data/` and "
             "`../shared/wheels/h200/*.whl` to `.whl/` (both ignored by git), carry `data`, `.whl` and the model's "
             "folder, start each call with the wheel install of `benchmarks/gpu_run.sh`, end it by copying the "
             "model's folder (`runs/reference/<model>/*`: state parts, log, manifest, at the end the checkpoint) or "
             "the summary (`runs/results/<family>.json`) to $OUT, and put what comes back where it was before the "
             "next call. A reference model's state is at most 32 MB in parts of 15 MiB; a checkpoint is under 16 MiB.",
             "",
             "The reference models (one model per call; rerun each line until it exits 0; `--max-minutes` stops it "
             "at an epoch boundary, exit 10):", "",
             "```bash",
             "python benchmarks/train_reference.py --data data/cifar10-jpeg.tar.gz --out runs/reference "
             "--models vim --epochs 100 --max-minutes 8",
             "python benchmarks/train_reference.py --data data/cifar10-jpeg.tar.gz --out runs/reference "
             "--models plainmamba --epochs 100 --max-minutes 8",
             "python benchmarks/train_reference.py --data data/cifar10-jpeg.tar.gz --out runs/reference "
             "--models groupmamba --epochs 100 --max-minutes 8",
             "```", "",
             "The table (GPU; per family, resumable the same way; then `render` anywhere):", "",
             "```bash"]
    for family in ("vim", "plainmamba", "groupmamba"):
        lines.append(f"python benchmarks/results.py run --family {family} --reference "
                     f"runs/reference/{family}/model.safetensors --data data/cifar10-jpeg.tar.gz "
                     f"--work runs/results --summary runs/results/{family}.json --max-minutes 8")
    lines += ["python benchmarks/results.py render runs/results/vim.json runs/results/plainmamba.json "
              "runs/results/groupmamba.json --doc docs/results.md --plot docs/results.png", "```", "",
              "What each cell runs (REF the reference checkpoint, TRAIN / TEST the CIFAR-10 folders, R the ratio):",
              "", "```bash",
              "ssmprune prune REF --ratio R <flags> --calib TRAIN --calib-images 256 -o CELL/tf --json",
              "ssmprune eval CELL/tf/model.safetensors --val TEST",
              "ssmprune bench CELL/tf/model.safetensors --dtype bf16 --batch 256 --json",
              "ssmprune finetune CELL/tf/model.safetensors --train TRAIN --epochs E --batch-size 128 -o CELL/ftE",
              "ssmprune eval CELL/ftE/model.safetensors --val TEST",
              "ssmprune finetune REF --teacher REF --train TRAIN --epochs E --batch-size 128 -o dense/ftE   # control",
              "```", ""]
    recorded = [(f, c) for f, s in sorted(summaries.items()) for c in s.get("cells", {}).values() if c.get("prune")]
    if recorded:
        lines += ["Each cell's exact commands, as run:", "", "<details>", "", "```bash"]
        for family, c in recorded:
            lines.append(f"# {family} {c['row']} @ {c['ratio']:g}")
            lines.append(c["prune"]["command"])
            for k in ("tf", *[f"ft{e}" for e in epochs]):
                if k in c:
                    if "command" in c[k]:
                        lines.append(c[k]["command"])
                    lines.append(c[k]["eval"])
            if "bench" in c:
                lines.append(c["bench"]["command"])
        lines += ["```", "", "</details>", ""]
    return lines


# ------------------------------------------------------------------------------------------------ the plot
def plot(summaries: Dict[str, Dict[str, Any]], path: Path, ratios: Sequence[float], epochs: Sequence[int]) -> None:
    """Top-1 against GMACs and against img/s, one line per method; Pillow only (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    families = [f for f in ("vim", "plainmamba", "groupmamba") if f in summaries] or ["vim"]
    stages = ["tf", f"ft{max(epochs)}"]
    W, H, pad = 420, 300, 46
    img = Image.new("RGB", (W * 2 * len(families), H * 2 + 150), "white")
    draw = ImageDraw.Draw(img)
    colours = ["#1f77b4", "#7f7f7f", "#bcbd22", "#9467bd", "#c5b0d5", "#d62728", "#ff9896", "#8c564b", "#2ca02c",
               "#98df8a"]
    for fi, family in enumerate(families):
        s = summaries.get(family, {})
        cells = s.get("cells", {})
        for si, stage in enumerate(stages):
            for xi, axis in enumerate(("gmacs", "images_per_s")):
                x0, y0 = (fi * 2 + xi) * W, si * H
                series = {}
                for ri, key in enumerate(ROWS):
                    pts = []
                    for ratio in ratios:
                        c = cells.get(f"{key}@{ratio:g}", {})
                        if stage in c and c.get("prune") and (axis == "gmacs" or c.get("bench")):
                            x = c["prune"]["gmacs"] if axis == "gmacs" else c["bench"]["images_per_s"]
                            pts.append((x, c[stage]["top1"]))
                    if pts:
                        series[key] = (colours[ri % len(colours)], sorted(pts))
                title = f"{family} {'training-free' if stage == 'tf' else stage.replace('ft', '') + ' epochs'}"
                _axes(draw, (x0, y0, W, H, pad), series, s, stage, axis, title)
    # legend
    ly = H * 2 + 10
    for ri, (key, (label, _, _)) in enumerate(ROWS.items()):
        lx = 10 + (ri % 2) * 420
        yy = ly + (ri // 2) * 24
        draw.line([(lx, yy + 7), (lx + 26, yy + 7)], fill=colours[ri % len(colours)], width=3)
        draw.text((lx + 32, yy), label.replace("Δ", "delta"), fill="black")  # the default font has no Δ
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _axes(draw, box, series, summary, stage, axis, title) -> None:
    x0, y0, W, H, pad = box
    left, top, right, bottom = x0 + pad, y0 + 24, x0 + W - 12, y0 + H - pad + 10
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((x0 + pad, y0 + 6), title, fill="black")
    draw.text((left, bottom + 18), "GMACs (fvcore)" if axis == "gmacs" else "img/s (bf16, batch 256)", fill="black")
    dense = summary.get("dense", {}).get(stage)
    xs = [p[0] for _, pts in series.values() for p in pts]
    ys = [p[1] for _, pts in series.values() for p in pts]
    if dense:
        cells = [c for c in summary.get("cells", {}).values() if c.get("prune")]
        dx = cells[0]["prune"]["dense_gmacs"] if cells and axis == "gmacs" else None
        if axis != "gmacs":
            benches = [c["bench"]["dense_images_per_s"] for c in cells if c.get("bench")]
            dx = sorted(benches)[len(benches) // 2] if benches else None
        if dx is not None:
            xs.append(dx)
            ys.append(dense["top1"])
            dense = (dx, dense["top1"])
        else:
            dense = None
    if not xs:
        draw.text((left + 20, (top + bottom) // 2), PENDING, fill="grey")
        return
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    xlo, xhi = (xlo - 1, xhi + 1) if xhi == xlo else (xlo - 0.05 * (xhi - xlo), xhi + 0.05 * (xhi - xlo))
    ylo, yhi = (ylo - 1, yhi + 1) if yhi == ylo else (ylo - 0.05 * (yhi - ylo), yhi + 0.05 * (yhi - ylo))
    X = lambda v: left + (v - xlo) / (xhi - xlo) * (right - left)  # noqa: E731
    Y = lambda v: bottom - (v - ylo) / (yhi - ylo) * (bottom - top)  # noqa: E731
    for v in (ylo, (ylo + yhi) / 2, yhi):
        draw.text((x0 + 4, Y(v) - 6), f"{v:.1f}", fill="black")
    for v in (xlo, (xlo + xhi) / 2, xhi):
        draw.text((X(v) - 14, bottom + 3), f"{v:.3g}", fill="black")
    for colour, pts in series.values():
        draw.line([(X(x), Y(y)) for x, y in pts], fill=colour, width=2) if len(pts) > 1 else None
        for x, y in pts:
            draw.ellipse([X(x) - 3, Y(y) - 3, X(x) + 3, Y(y) + 3], fill=colour)
    if dense:
        draw.rectangle([X(dense[0]) - 4, Y(dense[1]) - 4, X(dense[0]) + 4, Y(dense[1]) + 4], outline="black")
        draw.text((X(dense[0]) - 36, Y(dense[1]) - 16), "dense", fill="black")


# ================================================================================================ main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure one reference model's cells (resumable)")
    r.add_argument("--family", required=True, choices=list(FAMILY_TITLES))
    r.add_argument("--reference", type=Path, required=True)
    r.add_argument("--data", type=Path, required=True, help="cifar10-jpeg.tar.gz, or its extracted cifar10/ folder")
    r.add_argument("--work", type=Path, required=True, help="pruned and fine-tuned models go here")
    r.add_argument("--summary", type=Path, required=True, help="this family's results (read back to resume)")
    r.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    r.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    r.add_argument("--epochs", nargs="+", type=int, default=list(EPOCHS))
    r.add_argument("--calib-images", type=int, default=256)
    r.add_argument("--ft-batch-size", type=int, default=128)
    r.add_argument("--bench-batch", type=int, default=256)
    r.add_argument("--bench-dtype", default="bf16")
    r.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    r.add_argument("--train-images", type=int, default=None, help="fine-tune on this many (default: all)")
    r.add_argument("--max-minutes", type=float, default=0.0)
    r.add_argument("--device", default=None)
    r.add_argument("--small", action="store_true", help="few images and quick benchmarks: a CPU smoke test")
    d = sub.add_parser("render", help="write docs/results.md and the plot from summaries")
    d.add_argument("summaries", nargs="*", type=Path)
    d.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    d.add_argument("--plot", type=Path, default=Path("docs/results.png"))
    d.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    d.add_argument("--epochs", nargs="+", type=int, default=list(EPOCHS))
    args = ap.parse_args(argv)
    if args.command == "run":
        if args.small:
            args.test_images = args.test_images or 16
            args.train_images = args.train_images or 16
            args.calib_images = min(args.calib_images, 16)
            args.bench_batch = min(args.bench_batch, 8)
            args.ft_batch_size = min(args.ft_batch_size, 16)
            args.bench_dtype = "fp32"
        return Runner(args).run()
    summaries = {}
    for p in args.summaries:
        s = json.loads(p.read_text())
        summaries[s["family"]] = s
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    rel = args.plot.name if args.plot.parent.resolve() == args.doc.parent.resolve() else str(args.plot)
    args.doc.write_text(render(summaries, args.ratios, args.epochs, rel))
    plot(summaries, args.plot, args.ratios, args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
