"""Train the emotion classifiers on FER2013 (prepared by tools.prepare_expressions) and pick by val accuracy.

    nice -n 10 python -m tools.train_emotion cnn --minutes 25     # the CNN on the aligned grey crop (shipped)
    python -m tools.train_emotion mlp --threads 1 --minutes 2     # the MLP on blendshapes + geometry
    python -m tools.train_emotion report                          # both on FER val, fusion, confusion matrix
    python -m tools.train_emotion pack                            # JPEG-packed copy for a GPU machine, then
    python -m tools.train_emotion cnn --device cuda --cache .device_data/fer --minutes 1.7   # there

On a CPU shared with other jobs use --threads 1: with the cores busy, two torch threads wait on
each other (measured 506 s vs 286 s per CNN epoch, 13x slower for the MLP).

Resumable: state is saved every epoch to ~/.cache/anoncam/emotion_<kind>_state.pt and a rerun
continues from it (the learning-rate schedule follows training time spent against --minutes, so a
resumed run ends where an uninterrupted one would). --fresh starts over.

The CNN's best-by-val weights go to tools/checkpoints/emotion_cnn.pt (the frozen judge for the
generator, see tools.emotion_model) and the MLP's to tools/checkpoints/emotion_geometry.pt.
``report`` writes reports/emotion_metrics.json and reports/emotion_confusion.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tools.datasets import CACHE, EMOTIONS
from tools.emotion_model import CHECKPOINT, EmotionCNN, GeometryMLP

ROOT = Path(__file__).resolve().parent.parent
GEOMETRY_CHECKPOINT = CHECKPOINT.with_name("emotion_geometry.pt")
REPORTS = ROOT / "reports"


def load_split(name: str, cache: Path = CACHE) -> dict:
    path = cache / f"fer_{name}.npz"
    if not path.exists():
        raise SystemExit(f"{path} is missing; run `python -m tools.prepare_expressions` first")
    d = np.load(path)
    out = {k: d[k] for k in d.files}
    if "blob" in out:  # a `pack`ed copy: crops travel as JPEG to fit a GPU trip
        import cv2

        blob, off = out.pop("blob"), out.pop("offsets")
        out["crops"] = np.stack([cv2.imdecode(blob[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(len(off) - 1)])
    return out


def pack(args) -> None:
    """Copy the prepared splits with JPEG-coded crops (q95, about 1.3 kB each) for a GPU machine."""
    import cv2

    args.pack_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        d = load_split(name, args.cache)
        enc = [cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for c in d.pop("crops")]
        off = np.zeros(len(enc) + 1, np.int64)
        off[1:] = np.cumsum([len(e) for e in enc])
        keep = {k: d[k] for k in ("labels", "found", "has_blendshapes")}
        np.savez(args.pack_dir / f"fer_{name}.npz", blob=np.frombuffer(b"".join(enc), np.uint8), offsets=off, **keep)
        print(name, (args.pack_dir / f"fer_{name}.npz").stat().st_size / 1e6, "MB")


def geometry_features(landmarks: np.ndarray, blendshapes: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """The geometry MLP's inputs: centred aligned landmarks, blendshapes, pose/90 (as tools.prepare_expressions stores them)."""
    lm = (landmarks.astype(np.float32) - 0.5) * 4.0
    return np.concatenate([lm.reshape(len(lm), -1), blendshapes.astype(np.float32), pose.astype(np.float32) / 90.0], axis=1)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip, small shift/rotation/scale, brightness and contrast, in one grid_sample for the batch."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen).to(x.device)
    angle = (r(n) - 0.5) * math.radians(20)
    scale = 1.0 + (r(n) - 0.5) * 0.2
    flip = torch.where(r(n) < 0.5, -1.0, 1.0)
    tx, ty = (r(n) - 0.5) * 0.2, (r(n) - 0.5) * 0.2  # +-5 % of the side, about +-2.4 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1.0 + (r(n, 1, 1, 1) - 0.5) * 0.5
    bright = (r(n, 1, 1, 1) - 0.5) * 0.3
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp(0, 1)


def lr_at(progress: float, peak: float, warmup: float = 0.05) -> float:
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


@torch.no_grad()
def predict_cnn(model, crops: np.ndarray, batch: int = 512, tta: bool = True) -> np.ndarray:
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(crops), batch):
        x = torch.from_numpy(crops[i:i + batch]).to(dev).float().div_(255).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        logits = model(x)
        if tta:
            logits = (logits + model(torch.flip(x, dims=[3]))) / 2
        out.append(logits.float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def predict_mlp(model, feats: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(feats)).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def train(kind: str, args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_d, val_d = load_split("train", args.cache), load_split("val", args.cache)
    state_path = args.state or args.cache / f"emotion_{kind}_state.pt"
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    if kind == "cnn":
        model = EmotionCNN(width=args.width, stem_pool=not args.full_res).to(dev, memory_format=torch.channels_last)
        x_train = torch.from_numpy(train_d["crops"]).unsqueeze(1).to(dev)
        y_train = torch.from_numpy(train_d["labels"]).to(dev)
        ckpt_path, peak_lr, wd = args.checkpoint or CHECKPOINT, args.lr or 2e-3, 5e-4
    else:
        model = GeometryMLP()
        keep = train_d["found"] & train_d["has_blendshapes"]
        x_train = torch.from_numpy(geometry_features(train_d["landmarks"], train_d["blendshapes"], train_d["pose"])[keep])
        y_train = torch.from_numpy(train_d["labels"][keep])
        vkeep = val_d["found"] & val_d["has_blendshapes"]
        val_feats = geometry_features(val_d["landmarks"], val_d["blendshapes"], val_d["pose"])[vkeep]
        ckpt_path, peak_lr, wd = GEOMETRY_CHECKPOINT, args.lr or 1e-3, 1e-2
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    spent, epoch, best, history = 0.0, 0, -1.0, []
    if state_path.exists() and not args.fresh:
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        spent, epoch, best, history = st["spent"], st["epoch"], st["best"], st["history"]
        budget = st.get("budget", budget) if not args.new_budget else budget
        print(f"resuming {kind} at epoch {epoch}, {spent / 60:.1f} of {budget / 60:.1f} min spent, best val {best:.4f}")
    n = len(y_train)
    bar = tqdm(total=round(budget), initial=min(round(spent), round(budget)), unit="s", desc=f"train {kind}")
    while spent < budget:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(dev)
        tot, correct, seen = 0.0, 0, 0
        for i in range(0, n - args.batch + 1, args.batch):
            idx = perm[i:i + args.batch]
            progress = (spent + time.perf_counter() - t0) / budget
            for g in opt.param_groups:
                g["lr"] = lr_at(progress, peak_lr)
            if kind == "cnn":
                x = augment(x_train[idx].float().div_(255), gen).contiguous(memory_format=torch.channels_last)
            else:
                x = x_train[idx]
                x = x + torch.randn(x.shape, generator=gen) * 0.02
            y = y_train[idx]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if progress >= 1.0:
                break
        dt = time.perf_counter() - t0
        spent += dt
        epoch += 1
        bar.update(min(round(spent), round(budget)) - bar.n)
        if kind == "cnn":
            val_acc = accuracy(predict_cnn(model, val_d["crops"]), val_d["labels"])
        else:
            val_acc = accuracy(predict_mlp(model, val_feats), val_d["labels"][vkeep])
        history.append({"epoch": epoch, "loss": tot / max(seen, 1), "train_acc": correct / max(seen, 1), "val_acc": val_acc,
                        "minutes": spent / 60})
        bar.set_postfix(epoch=epoch, loss=f"{tot / max(seen, 1):.3f}", val=f"{val_acc:.4f}", best=f"{max(best, val_acc):.4f}")
        if val_acc > best:
            best = val_acc
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            extra = {"width": model.width, "stem_pool": model.stem_pool} if kind == "cnn" else {}
            torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "val_acc": val_acc, "epoch": epoch, "classes": list(EMOTIONS), **extra}, ckpt_path)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "spent": spent,
                    "epoch": epoch, "best": best, "history": history, "budget": budget}, state_path)
    bar.close()
    for h in history[-args.show_epochs:]:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in h.items()))
    print(f"{kind}: {epoch} epochs, {spent / 60:.1f} min, best val acc {best:.4f} -> {ckpt_path}")


def confusion(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    cm = np.zeros((len(EMOTIONS), len(EMOTIONS)), np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def plot_confusion(cm: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(EMOTIONS)):
        for j in range(len(EMOTIONS)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(args) -> None:
    torch.set_num_threads(args.threads)
    val_d = load_split("val", args.cache)
    labels = val_d["labels"]
    found = val_d["found"] & val_d["has_blendshapes"]
    ck = torch.load(CHECKPOINT, weights_only=True)
    cnn = EmotionCNN(width=ck["width"], stem_pool=ck.get("stem_pool", True))
    cnn.load_state_dict(ck["model"])
    cnn = cnn.to(memory_format=torch.channels_last)
    cnn_logits = predict_cnn(cnn, val_d["crops"])
    metrics = {
        "dataset": "FER2013 val (re-split copy), all images",
        "val_images": int(len(labels)),
        "mediapipe_found": int(val_d["found"].sum()),
        "cnn": {"val_acc": accuracy(cnn_logits, labels), "val_acc_found": accuracy(cnn_logits[found], labels[found]),
                "val_acc_missed": accuracy(cnn_logits[~found], labels[~found]), "epoch": ck["epoch"],
                "params": sum(p.numel() for p in cnn.parameters()), "flip_tta": True},
    }
    fused_logits = cnn_logits
    chosen = "cnn"
    if GEOMETRY_CHECKPOINT.exists():
        gk = torch.load(GEOMETRY_CHECKPOINT, weights_only=True)
        mlp = GeometryMLP()
        mlp.load_state_dict(gk["model"])
        feats = geometry_features(val_d["landmarks"], val_d["blendshapes"], val_d["pose"])
        mlp_logits = predict_mlp(mlp, feats)
        metrics["mlp"] = {"val_acc_found": accuracy(mlp_logits[found], labels[found]), "epoch": gk["epoch"],
                          "params": sum(p.numel() for p in mlp.parameters())}
        # Late fusion of log-probabilities; the weight is chosen on the first half of val and
        # reported on the second half, so the fusion's gain is not measured on what tuned it.
        lp_c = torch.log_softmax(torch.from_numpy(cnn_logits), 1).numpy()
        lp_m = torch.log_softmax(torch.from_numpy(mlp_logits), 1).numpy()
        half = np.arange(len(labels)) % 2 == 0
        weights = np.round(np.arange(0, 1.01, 0.05), 2)

        def fuse(w):
            out = lp_c.copy()
            out[found] = lp_c[found] + w * lp_m[found]
            return out

        tune = [accuracy(fuse(w)[half], labels[half]) for w in weights]
        w_best = float(weights[int(np.argmax(tune))])
        f = fuse(w_best)
        metrics["fusion"] = {"mlp_weight": w_best, "val_acc": accuracy(f, labels),
                             "val_acc_heldout_half": accuracy(f[~half], labels[~half]),
                             "cnn_val_acc_heldout_half": accuracy(cnn_logits[~half], labels[~half]),
                             "val_acc_found": accuracy(f[found], labels[found])}
        gain = metrics["fusion"]["val_acc_heldout_half"] - metrics["fusion"]["cnn_val_acc_heldout_half"]
        if w_best > 0 and gain >= args.min_fusion_gain:
            fused_logits, chosen = f, "fused"
    metrics["selected"] = chosen
    metrics["selected_val_acc"] = accuracy(fused_logits, labels)
    cm = confusion(fused_logits.argmax(1), labels)
    metrics["confusion_matrix"] = {"classes": list(EMOTIONS), "rows_true_cols_pred": cm.tolist()}
    metrics["per_class_recall"] = {c: float(cm[i, i] / max(cm[i].sum(), 1)) for i, c in enumerate(EMOTIONS)}
    REPORTS.mkdir(exist_ok=True)
    png = REPORTS / "emotion_confusion.png"
    plot_confusion(cm, f"FER2013 val, {chosen}: accuracy {metrics['selected_val_acc']:.3f} (n={len(labels)})", png)
    metrics["confusion_png"] = str(png.relative_to(ROOT))
    (REPORTS / "emotion_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}, indent=2))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.train_emotion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("cnn", "mlp", "report", "pack"))
    ap.add_argument("--minutes", type=float, default=25.0, help="training-time budget (the LR schedule spans it)")
    ap.add_argument("--new-budget", action="store_true", help="on resume, use --minutes instead of the saved budget")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-fusion-gain", type=float, default=0.005)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--show-epochs", type=int, default=5, help="print the last N epochs' figures at the end")
    ap.add_argument("--full-res", action="store_true", help="CNN stages from 48 px instead of 24 px (4x the compute)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--checkpoint", type=Path, help="where the best CNN weights go (default tools/checkpoints/emotion_cnn.pt)")
    ap.add_argument("--state", type=Path, help="resumable state file (default in the cache folder)")
    ap.add_argument("--pack-dir", type=Path, default=ROOT / ".device_data" / "fer")
    ap.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.what == "report":
        report(args)
    elif args.what == "pack":
        pack(args)
    else:
        train(args.what, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
