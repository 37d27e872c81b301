"""Train the edge generator: landmark conditioning -> face crop (LSGAN + masked L1 + feature matching).

With ``--expression W`` it adds an expression-consistency loss: the frozen emotion CNN of the
metadata stage (tools/checkpoints/emotion_cnn.pt, trained on FER2013 train; never the independent
judge used by tools.evaluate) scores the composite face, which must match its scores of the real one.

With ``--fer PACK --fer-weight W`` (PACK from tools.pack_generator_data) the same loss also runs
on FER2013 train faces, which show the angry, sad, fearful and disgusted faces the photo set lacks.
Their conditioning is the identity-free shape the agent draws at run time; the generated face is
pasted into the 48 px FER face and must read as the same expression. The discriminator also judges
these faces (pasted into the batch's real photos), so they have to look like faces too.

    python -m tools.train_generator --minutes 30                      # CPU, resumes runs/generator
    python -m tools.train_generator --minutes 9 --data DIR --run DIR  # same script on a CUDA GPU

Resumable: state (G, D, EMA, optimizers, step) goes to RUN/state.pt every few minutes and at the
end, and a rerun continues from it. RUN/generator_ema.pt is the compact export checkpoint (EMA
weights, fp16). RUN/samples_*.png are grids of conditioning | generated | real on held-out faces,
RUN/log.jsonl the loss curve. Time-budgeted: it stops cleanly after --minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from agent.synthesis.align import CROP_SIZE
from agent.synthesis.render import RENDERED_INDICES, render_conditioning
from agent.synthesis.topology import FACE_OVAL_POLYGON
from tools.datasets import CACHE, PackedFaces
from tools.generator_model import EdgeGenerator, MultiScaleDiscriminator
from tools.pack_generator_data import PackedFer

OVAL_ROWS = np.searchsorted(RENDERED_INDICES, FACE_OVAL_POLYGON)


def loss_mask(points: np.ndarray, size: int) -> np.ndarray:
    """Where the loss looks: the face oval, softly widened (it is what gets pasted back)."""
    m = np.zeros((size, size), np.float32)
    cv2.fillPoly(m, [np.round(points[OVAL_ROWS] * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    m = cv2.GaussianBlur(cv2.dilate(m, np.ones((9, 9), np.uint8)), (0, 0), 3)
    return np.clip(m, 0, 1)


def _decode_and_render(args):
    """Rows lo:hi of a pack: (pixels, conditioning, loss mask). Photos: the aligned crop and its own
    landmarks. FER faces (``fer``): the 48 px grey crop and the identity-free shape drawn at run time."""
    path, lo, hi, fer = args
    if fer:
        pack = PackedFer(path)
        landmarks, pixels = pack.conditioning_landmarks(rows=slice(lo, hi)), pack.crop
    else:
        pack = PackedFaces(path)
        landmarks, pixels = pack.landmarks[lo:hi], pack.image
    conds = [render_conditioning(p, CROP_SIZE) for p in landmarks]
    masks = [(loss_mask(p, CROP_SIZE) * 255).astype(np.uint8) for p in landmarks]
    return np.stack([pixels(i) for i in range(lo, hi)]), np.stack(conds), np.stack(masks)


def load_pack(path: Path, workers: int, limit: int = 0, fer: bool = False):
    n = len(PackedFer(path) if fer else PackedFaces(path))
    n = min(n, limit) if limit else n
    step = max(64, math.ceil(n / (workers * 4)))
    jobs = [(path, lo, min(lo + step, n), fer) for lo in range(0, n, step)]
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = list(tqdm(pool.imap(_decode_and_render, jobs), total=len(jobs), desc=f"render {path.name}"))
    return tuple(torch.from_numpy(np.concatenate(p)) for p in zip(*parts))


def to_net(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def jitter(tensors, strength: float):
    """The same small random similarity warp on every tensor: robustness to alignment noise."""
    n = tensors[0].shape[0]
    dev = tensors[0].device
    ang = (torch.rand(n, device=dev) * 2 - 1) * math.radians(4) * strength
    scale = 1 + (torch.rand(n, device=dev) * 2 - 1) * 0.05 * strength
    shift = (torch.rand(n, 2, device=dev) * 2 - 1) * 0.04 * strength
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, tensors[0].shape, align_corners=False)
    return [F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False) for t in tensors]


def expression_kl(judge, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """KL(judge(real) || judge(fake)) per face, averaged, for aligned RGB crops in [-1, 1]."""
    from tools.emotion_model import aligned_rgb_to_input

    return judge_kl(judge, aligned_rgb_to_input(real, (-1, 1)), aligned_rgb_to_input(fake, (-1, 1)))[0]


def judge_kl(judge, real_x: torch.Tensor, fake_x: torch.Tensor):
    """(mean KL(judge(real) || judge(fake)), share of faces whose top class agrees) for judge inputs.

    Soft targets keep the judge's uncertainty about the real face; gradients reach only ``fake_x``.
    """
    with torch.no_grad():
        target = F.softmax(judge(real_x), 1)
    logits = judge(fake_x)
    kl = (target * (target.clamp_min(1e-8).log() - F.log_softmax(logits, 1))).sum(1).mean()
    return kl, (logits.argmax(1) == target.argmax(1)).float().mean()


def fer_composite(fake: torch.Tensor, mask: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """The generated face pasted into the 48 px grey FER face, as the judge will see it (N, 1, 48, 48) in [0, 1]."""
    from tools.emotion_model import aligned_rgb_to_input

    size = crop.shape[-1]
    m = F.interpolate(mask, size=(size, size), mode="area")
    return m * aligned_rgb_to_input(fake, (-1, 1)) + (1 - m) * crop


def save_grid(path: Path, *columns):
    """One row per face, one column per tensor (N, 3, S, S) in [-1, 1]: e.g. conditioning | generated | real."""
    grid = torch.cat([torch.cat(list(row), 2) for row in zip(*columns)], 1)
    img = ((grid.float().clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).cpu().numpy()
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.train_generator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (data loading not counted)")
    ap.add_argument("--data", type=Path, default=CACHE, help="folder with faces128_train.npz (and _heldout.npz for samples)")
    ap.add_argument("--run", type=Path, default=Path("runs/generator"))
    ap.add_argument("--init", type=Path, help="start G from this generator_ema.pt when the run has no state yet")
    ap.add_argument("--batch", type=int, default=0, help="default: 64 on CUDA, 16 on CPU")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--l1", type=float, default=100.0)
    ap.add_argument("--fm", type=float, default=10.0, help="discriminator feature-matching weight")
    ap.add_argument("--expression", type=float, default=0.0,
                    help="weight of the expression-consistency loss (frozen emotion CNN); 0 = off")
    ap.add_argument("--fer", type=Path, help="FER expression pack (tools.pack_generator_data) for the expression loss on FER faces")
    ap.add_argument("--fer-weight", type=float, default=5.0, help="weight of the expression loss on FER faces")
    ap.add_argument("--d-warmup", type=int, default=0,
                    help="train only the discriminator for this many steps first (a fresh D beside an --init G)")
    ap.add_argument("--workers", type=int, default=max(1, min(16, mp.cpu_count())))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training faces (smoke runs)")
    ap.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (smoke runs; 0: time only)")
    ap.add_argument("--checkpoint-minutes", type=float, default=2.0)
    return ap


@dataclass
class Data:
    """The training tensors on the device: photos (pixels, conditioning, loss masks), the held-out
    faces the sample grids show, and the FER pack's (crops, conditioning, masks) with ``--fer``."""

    imgs: torch.Tensor
    conds: torch.Tensor
    masks: torch.Tensor
    s_imgs: torch.Tensor
    s_conds: torch.Tensor
    fer: tuple | None = None


def load_data(args, dev, batch: int) -> Data:
    imgs, conds, masks = (t.to(dev) for t in load_pack(args.data / f"faces{CROP_SIZE}_train.npz", args.workers, args.limit))
    held = args.data / f"faces{CROP_SIZE}_heldout.npz"
    if held.exists():
        s_imgs, s_conds, _ = (t.to(dev) for t in load_pack(held, 1, 8))
    else:
        s_imgs, s_conds = imgs[:8], conds[:8]
    print(f"{imgs.shape[0]} training faces on {dev}, batch {batch}")
    data = Data(imgs, conds, masks, s_imgs, s_conds)
    if args.fer:
        data.fer = tuple(t.to(dev) for t in load_pack(args.fer, args.workers, args.limit, fer=True))
        print(f"{data.fer[0].shape[0]} FER faces for the expression loss, weight {args.fer_weight}")
    return data


@dataclass
class Nets:
    """Generator, discriminator, the generator's EMA and the optimizers, with the run's progress."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer
    step: int = 0
    trained_s: float = 0.0


def build_nets(args, dev, state_path: Path) -> Nets:
    """Fresh networks, resumed from ``state_path`` when the run has one, else G from ``--init`` if given."""
    G = EdgeGenerator().to(dev).to(memory_format=torch.channels_last)
    D = MultiScaleDiscriminator().to(dev).to(memory_format=torch.channels_last)
    G_ema = EdgeGenerator().to(dev).eval()
    nets = Nets(G, D, G_ema, torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999)),
                torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999)))
    if state_path.exists():
        st = torch.load(state_path, map_location=dev)
        for name in ("G", "D", "G_ema", "optG", "optD"):
            getattr(nets, name).load_state_dict(st[name])
        nets.step, nets.trained_s = st["step"], st.get("trained_s", 0.0)
        print(f"resumed {state_path} at step {nets.step} ({nets.trained_s / 60:.1f} min trained)")
    else:
        if args.init:
            G.load_state_dict({k: v.float() for k, v in torch.load(args.init, map_location=dev).items()})
            print(f"initialised G from {args.init}")
        G_ema.load_state_dict(G.state_dict())
    for p in G_ema.parameters():
        p.requires_grad_(False)
    return nets


def save_checkpoint(run: Path, nets: Nets, data: Data, args, trained_s: float, final: bool = False) -> None:
    """RUN/state.pt (everything to resume), RUN/generator_ema.pt (the export checkpoint) and sample grids."""
    torch.save({"G": nets.G.state_dict(), "D": nets.D.state_dict(), "G_ema": nets.G_ema.state_dict(),
                "optG": nets.optG.state_dict(), "optD": nets.optD.state_dict(), "step": nets.step,
                "trained_s": trained_s, "args": {k: str(v) for k, v in vars(args).items()}}, run / "state.pt.tmp")
    (run / "state.pt.tmp").replace(run / "state.pt")
    # CPU tensors: the compact checkpoint is committed and loaded on machines without a GPU.
    torch.save({k: (v.half() if v.is_floating_point() else v).cpu() for k, v in nets.G_ema.state_dict().items()},
               run / "generator_ema.pt")
    step = nets.step
    with torch.no_grad():
        save_grid(run / ("samples_final.png" if final else f"samples_{step:07d}.png"),
                  to_net(data.s_conds), nets.G_ema(to_net(data.s_conds)), to_net(data.s_imgs))
        if data.fer is not None:
            # conditioning | generated | pasted into the FER face | the FER face (grey, 48 px shown at 128)
            f_crops, f_conds, f_masks = data.fer
            c, m, crop = to_net(f_conds[:8]), f_masks[:8, None].float() / 255, f_crops[:8, None].float() / 255
            fake = nets.G_ema(c)

            def as_rgb(x):
                return F.interpolate(x, size=c.shape[-2:], mode="bilinear").expand(-1, 3, -1, -1) * 2 - 1

            save_grid(run / ("fer_final.png" if final else f"fer_{step:07d}.png"),
                      c, fake, as_rgb(fer_composite(fake, m, crop)), as_rgb(crop))


def sample_batch(data: Data, batch: int, dev) -> SimpleNamespace:
    """A jittered batch of photos (cond, real, mask), the generator's input ``g_in``, and with FER
    faces their masks and crops (``fer``: (f_mask, f_crop), their conditioning appended to g_in)."""
    idx = torch.randint(0, data.imgs.shape[0], (batch,), device=dev)
    cond, real, mask = to_net(data.conds[idx]), to_net(data.imgs[idx]), data.masks[idx][:, None].float() / 255
    cond, real, mask = jitter([cond, real, mask], 1.0)
    g_in, fer = cond, None
    if data.fer is not None:
        f_crops, f_conds, f_masks = data.fer
        fidx = torch.randint(0, f_crops.shape[0], (batch,), device=dev)
        f_cond, f_mask = to_net(f_conds[fidx]), f_masks[fidx][:, None].float() / 255
        fer = (f_mask, f_crops[fidx][:, None].float() / 255)
        g_in = torch.cat([cond, f_cond])
    return SimpleNamespace(cond=cond, real=real.contiguous(memory_format=torch.channels_last), mask=mask,
                           g_in=g_in.contiguous(memory_format=torch.channels_last), fer=fer)


def _lsgan(outputs, target: float):
    return sum(F.mse_loss(o[0].float(), torch.full_like(o[0].float(), target)) for o in outputs)


def d_step(nets: Nets, b: SimpleNamespace, batch: int, amp: dict) -> SimpleNamespace:
    """The discriminator's step: real photos vs the composite a viewer would see (synthetic oval in a
    real frame). Returns the generator's forward pass for its own step."""
    with torch.autocast(**amp):
        out = nets.G(b.g_in)
        fake = out[:batch]
        comp = b.mask * fake + (1 - b.mask) * b.real
        d_cond, d_comp, f_fake = b.cond, comp, None
        if b.fer is not None:
            f_mask = b.fer[0]
            f_fake = out[batch:]
            # Pasted into this batch's real photos: aligned crops share one framing, so the
            # average-shape oval lands on a face, and D sees these faces as it sees the others.
            d_cond, d_comp = b.g_in, torch.cat([comp, f_mask * f_fake + (1 - f_mask) * b.real])
        d_real = nets.D(b.cond, b.real)
        d_fake = nets.D(d_cond, d_comp.detach())
        loss_d = (_lsgan(d_real, 1.0) + _lsgan(d_fake, 0.0)) * 0.5
    nets.optD.zero_grad(set_to_none=True)
    loss_d.backward()
    nets.optD.step()
    return SimpleNamespace(fake=fake, comp=comp, f_fake=f_fake, d_cond=d_cond, d_comp=d_comp, d_real=d_real,
                           loss_d=loss_d)


def g_step(nets: Nets, b: SimpleNamespace, fwd: SimpleNamespace, judge, args, batch: int, amp: dict, dev) -> dict:
    """The generator's step: adversarial + feature matching + masked L1, and the expression losses."""
    zero = torch.zeros((), device=dev)
    losses = {"expr": zero, "f_kl": zero, "f_agree": zero}
    with torch.autocast(**amp):
        d_fake = nets.D(fwd.d_cond, fwd.d_comp)
        adv = _lsgan(d_fake, 1.0)
        fm = sum(F.l1_loss(ff[:batch].float(), rf.detach().float()) for f, r in zip(d_fake, fwd.d_real) for ff, rf in zip(f[1], r[1]))
        weight = 0.1 + 0.9 * b.mask
        l1 = (weight * (fwd.fake.float() - b.real.float()).abs()).mean() / weight.mean()
        loss_g = adv + args.fm * fm + args.l1 * l1
        if judge is not None:
            losses["expr"] = expression_kl(judge, b.real.float(), fwd.comp.float())
            loss_g = loss_g + args.expression * losses["expr"]
        if b.fer is not None:
            f_mask, f_crop = b.fer
            flip = (torch.rand(batch, 1, 1, 1, device=dev) < 0.5)

            def flipped(x):
                return torch.where(flip, x.flip(-1), x)

            losses["f_kl"], losses["f_agree"] = judge_kl(judge, flipped(f_crop),
                                                         flipped(fer_composite(fwd.f_fake.float(), f_mask, f_crop)))
            loss_g = loss_g + args.fer_weight * losses["f_kl"]
    nets.optG.zero_grad(set_to_none=True)
    loss_g.backward()
    nets.optG.step()
    return {**losses, "adv": adv, "fm": fm, "l1": l1, "d_fake": d_fake}


def log_record(nets: Nets, fwd, losses: dict, lr: float, trained_s: float, samples_per_s: float) -> dict:
    return {"step": nets.step, "t": round(trained_s, 1), "loss_d": float(fwd.loss_d), "adv": float(losses["adv"]),
            "fm": float(losses["fm"]), "l1": float(losses["l1"]), "expr_kl": float(losses["expr"]),
            "fer_kl": float(losses["f_kl"]), "fer_agree": float(losses["f_agree"]),
            "d_real": float(sum(r[0].float().mean() for r in fwd.d_real) / 2),
            "d_fake": float(sum(f[0].float().mean() for f in losses["d_fake"]) / 2), "lr": lr,
            "samples_per_s": round(samples_per_s, 1)}


def main(argv=None):
    args = parser().parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = args.batch or (64 if dev.type == "cuda" else 16)
    args.run.mkdir(parents=True, exist_ok=True)
    data = load_data(args, dev, batch)
    state_path = args.run / "state.pt"
    # A fresh discriminator beside a trained generator first learns what it is looking at.
    d_warmup = args.d_warmup if not state_path.exists() else 0
    nets = build_nets(args, dev, state_path)
    judge = None
    if args.expression > 0 or args.fer:
        from tools.emotion_model import load_emotion_cnn

        judge = load_emotion_cnn(map_location=dev)

    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else dict(device_type="cpu", enabled=False)
    budget = args.minutes * 60
    start_step, warmup_end = nets.step, nets.step + d_warmup
    t_start = last_ckpt = time.time()
    log = open(args.run / "log.jsonl", "a")
    ema_params, g_params = list(nets.G_ema.parameters()), [p.detach() for p in nets.G.parameters()]
    ema_buffers, g_buffers = list(nets.G_ema.buffers()), list(nets.G.buffers())
    bar = tqdm(total=int(budget), unit="s", desc="train", bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}s {postfix}")
    ema_decay = 0.999
    while (elapsed := time.time() - t_start) < budget and not (args.max_steps and nets.step >= args.max_steps):
        # Linear decay over the last half of this run's budget settles the GAN before export.
        lr = args.lr * min(1.0, 2.0 * (1.0 - elapsed / budget))
        for group in (*nets.optG.param_groups, *nets.optD.param_groups):
            group["lr"] = lr
        b = sample_batch(data, batch, dev)
        fwd = d_step(nets, b, batch, amp)
        if nets.step < warmup_end:
            nets.step += 1
            continue
        losses = g_step(nets, b, fwd, judge, args, batch, amp, dev)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, g_params, 1 - ema_decay)
            torch._foreach_copy_(ema_buffers, g_buffers)
        nets.step += 1
        if nets.step % 50 == 0:
            now = time.time() - t_start
            rec = log_record(nets, fwd, losses, lr, nets.trained_s + now, (nets.step - start_step) * batch / max(1e-6, now))
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.n = int(now)
            bar.set_postfix(step=nets.step, D=f"{rec['loss_d']:.3f}", L1=f"{rec['l1']:.4f}", refresh=True)
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            save_checkpoint(args.run, nets, data, args, nets.trained_s + time.time() - t_start)
            last_ckpt = time.time()
    bar.close()
    log.close()
    save_checkpoint(args.run, nets, data, args, nets.trained_s + time.time() - t_start, final=True)
    print(f"stopped at step {nets.step}, {(nets.trained_s + time.time() - t_start) / 60:.1f} min trained in total; {args.run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
