"""Train the head generator: landmark conditioning and the head's surroundings -> the whole head.

The face generator draws a face oval and leaves the hair, ears and outline of the head, which
identify people. The head generator redraws the whole head region (agent.synthesis.head: the face
oval joined to the cranium and ears) inside a crop that also shows what is around the head: the neck,
the shoulders, the background. It sees the rendered landmarks of the face and that surrounding with
the head blanked out, never a pixel of the head itself, so it must invent hair and outline, and it
learns to match their tone and light to the visible neck and to end the head in the background.

Losses: masked L1 inside the head (where the photo is known), LSGAN with a two-scale conditional
PatchGAN on the composite (synthetic head in the real surroundings) and discriminator feature matching;
with ``--expression W``, the frozen emotion CNN must read the composite's face as it reads the real one.

    python -m tools.prepare_heads                                 # once: ~/.cache/anoncam/heads192_*.npz
    python -m tools.train_head --minutes 60                       # CPU; resumes runs/head
    python -m tools.train_head --minutes 12 --data DIR --run DIR  # the same on a CUDA GPU

Resumable and time-budgeted like tools.train_generator: RUN/state.pt (everything to resume) every
few minutes and at the end, RUN/head_train.pt (the same without the optimizers, fp16: committed as
tools/checkpoints/head_train.pt, from which a fresh run continues), RUN/head_generator_ema.pt (EMA
weights, fp16: the checkpoint to export), RUN/samples_*.png (conditioning | surroundings | composite | real, held-out faces; they
show dataset photos and stay in runs/, which is gitignored) and RUN/log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from agent.synthesis.align import alignment_matrix
from agent.synthesis.head import HEAD_SIZE, head_mask
from agent.synthesis.render import RENDERED_INDICES, render_conditioning
from tools.datasets import CACHE
from tools.generator_model import EdgeGenerator, MultiScaleDiscriminator
from tools.prepare_heads import PackedHeads
from tools.train_generator import _lsgan, expression_kl, jitter, save_grid, to_net

IN_CH = 7  # conditioning (3), surroundings (3), head mask (1)
FACE_VIEW = 64  # side of the face crops the expression loss compares (the classifier resizes them to 48)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.train_head", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (data loading not counted)")
    ap.add_argument("--data", type=Path, default=CACHE, help=f"folder with heads{HEAD_SIZE}_train.npz (and _heldout)")
    ap.add_argument("--run", type=Path, default=Path("runs/head"))
    ap.add_argument("--resume", type=Path, default=Path("tools/checkpoints/head_train.pt"),
                    help="continue from this committed compact state when the run has none of its own")
    ap.add_argument("--init", type=Path, default=Path("tools/checkpoints/generator_ema.pt"),
                    help="else seed G from this face generator checkpoint")
    ap.add_argument("--batch", type=int, default=0, help="default: 64 on CUDA, 8 on CPU")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--l1", type=float, default=100.0)
    ap.add_argument("--fm", type=float, default=10.0, help="discriminator feature-matching weight")
    ap.add_argument("--expression", type=float, default=0.0,
                    help="weight of the expression-consistency loss: the frozen emotion CNN of the metadata stage "
                         "(tools/checkpoints/emotion_cnn.pt, never a judge of tools.evaluate) must read the synthetic "
                         "head's face as it reads the real one; 0 = off")
    ap.add_argument("--d-channels", type=int, default=32, help="the discriminator's base width (64 on a GPU)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA always; on CPUs with AMX or AVX512-BF16)")
    ap.add_argument("--workers", type=int, default=max(1, min(16, mp.cpu_count())))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training heads (smoke runs)")
    ap.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (smoke runs; 0: time only)")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    return ap


def face_theta(crop_landmarks: np.ndarray, crop_size: int, face_size: int = FACE_VIEW) -> np.ndarray:
    """(2, 3) ``F.affine_grid`` matrix that samples the face's alignment crop (``face_size`` px, as the
    emotion classifier reads faces) out of its head crop, in normalized coordinates (align_corners=False)."""
    def to_pixels(size):  # normalized -> pixel coordinates
        return np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])

    crop_to_face = np.vstack([alignment_matrix(crop_landmarks, face_size), [0, 0, 1]])
    return (np.linalg.inv(to_pixels(crop_size)) @ np.linalg.inv(crop_to_face) @ to_pixels(face_size))[:2].astype(np.float32)


def _decode(args):
    """Rows lo:hi of a pack: (pixels, conditioning, head mask, in-photo mask) as uint8, and face_theta."""
    path, lo, hi = args
    pack = PackedHeads(path)
    rows = range(lo, hi)
    conds = [render_conditioning(pack.landmarks[i][RENDERED_INDICES], pack.size) for i in rows]
    masks = [(head_mask(pack.landmarks[i], pack.size) * 255).astype(np.uint8) for i in rows]
    return (np.stack([pack.image(i) for i in rows]), np.stack(conds), np.stack(masks),
            np.stack([pack.valid(i) for i in rows]), np.stack([face_theta(pack.landmarks[i], pack.size) for i in rows]))


def load_pack(path: Path, workers: int, limit: int = 0) -> tuple[torch.Tensor, ...]:
    n = len(PackedHeads(path))
    n = min(n, limit) if limit else n
    step = max(32, math.ceil(n / (workers * 4)))
    jobs = [(path, lo, min(lo + step, n)) for lo in range(0, n, step)]
    with mp.get_context("spawn").Pool(workers) as pool:
        parts = list(tqdm(pool.imap(_decode, jobs), total=len(jobs), desc=f"render {path.name}"))
    return tuple(torch.from_numpy(np.concatenate(p)) for p in zip(*parts))


def generator_input(cond: torch.Tensor, real: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N, 7, S, S): the conditioning, the crop with the head (and what lies outside the photo) at 0,
    and the head mask in [-1, 1]. The agent builds the same from a frame (agent.synthesis.head)."""
    return torch.cat([cond, real * (1 - mask) * valid, mask * 2 - 1], 1)


def seed_from_face_generator(G: EdgeGenerator, path: Path) -> None:
    """Start from the face generator: its stem's three conditioning channels, zero for the new ones."""
    state = {k: v.float() for k, v in torch.load(path, map_location="cpu").items()}
    stem = state["stem.0.weight"]
    grown = torch.zeros((stem.shape[0], IN_CH, *stem.shape[2:]))
    grown[:, :stem.shape[1]] = stem
    state["stem.0.weight"] = grown
    G.load_state_dict(state)


def compact_state(state_path: Path, out: Path) -> None:
    """The run's networks in fp16 without the optimizers' moments: small enough to commit, so that
    training continues on another day or machine (``--resume``)."""
    st = torch.load(state_path, map_location="cpu")
    half = {name: {k: (v.half() if v.is_floating_point() else v) for k, v in st[name].items()}
            for name in ("G", "D", "G_ema")}
    torch.save({**half, "step": st["step"], "trained_s": st["trained_s"]}, out)


class Trainer:
    def __init__(self, args, dev):
        self.args, self.dev = args, dev
        self.batch = args.batch or (64 if dev.type == "cuda" else 8)
        self.amp = (dict(device_type=dev.type, dtype=torch.bfloat16) if dev.type == "cuda" or args.bf16
                    else dict(device_type="cpu", enabled=False))
        train = args.data / f"heads{HEAD_SIZE}_train.npz"
        if not train.exists():
            raise SystemExit(f"{train} not found: run python -m tools.prepare_heads first")
        self.data = [t.to(dev) for t in load_pack(train, args.workers, args.limit)]
        held = args.data / f"heads{HEAD_SIZE}_heldout.npz"
        self.samples = [t.to(dev) for t in load_pack(held, 1, 6)] if held.exists() else [t[:6] for t in self.data]
        print(f"{self.data[0].shape[0]} training heads on {dev}, batch {self.batch}")
        self.G = EdgeGenerator(in_ch=IN_CH).to(dev)
        self.D = MultiScaleDiscriminator(args.d_channels).to(dev)
        self.G_ema = EdgeGenerator(in_ch=IN_CH).to(dev).eval()
        self.optG = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(0.5, 0.999))
        self.optD = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(0.5, 0.999))
        self.step, self.trained_s = 0, 0.0
        self.state_path = args.run / "state.pt"
        if self.state_path.exists():
            st = torch.load(self.state_path, map_location=dev)
            for name in ("G", "D", "G_ema", "optG", "optD"):
                getattr(self, name).load_state_dict(st[name])
            self.step, self.trained_s = st["step"], st.get("trained_s", 0.0)
            print(f"resumed {self.state_path} at step {self.step} ({self.trained_s / 60:.1f} min trained)")
        elif args.resume and args.resume.exists():
            st = torch.load(args.resume, map_location=dev)
            for name in ("G", "D", "G_ema"):
                getattr(self, name).load_state_dict({k: v.float() if v.is_floating_point() else v
                                                     for k, v in st[name].items()})
            self.step, self.trained_s = st["step"], st["trained_s"]
            print(f"continued from {args.resume} at step {self.step} ({self.trained_s / 60:.1f} min trained; "
                  "fresh optimizer moments)")
        else:
            if args.init and args.init.exists():
                seed_from_face_generator(self.G, args.init)
                print(f"seeded G from {args.init}")
            self.G_ema.load_state_dict(self.G.state_dict())
        for p in self.G_ema.parameters():
            p.requires_grad_(False)
        self.judge = None
        if args.expression > 0:
            from tools.emotion_model import load_emotion_cnn
            self.judge = load_emotion_cnn(map_location=dev)

    def batch_of(self, tensors, idx) -> SimpleNamespace:
        imgs, conds, masks, valid, theta = (t[idx] for t in tensors)
        real, cond = to_net(imgs), to_net(conds)
        mask, inside = masks[:, None].float() / 255, valid[:, None].float() / 255
        return SimpleNamespace(real=real, cond=cond, mask=mask, valid=inside, theta=theta)

    def expression_loss(self, b, comp: torch.Tensor) -> torch.Tensor:
        """The emotion CNN's KL between the real face and the composite's, both seen in the face's
        alignment crop. The crops come from the mesh before jitter: both are framed alike, which is
        all a consistency loss needs."""
        grid = F.affine_grid(b.theta, (b.theta.shape[0], 3, FACE_VIEW, FACE_VIEW), align_corners=False)
        real = F.grid_sample(b.real, grid, padding_mode="border", align_corners=False)
        fake = F.grid_sample(comp.float(), grid, padding_mode="border", align_corners=False)
        return expression_kl(self.judge, real, fake)

    def train_step(self) -> dict:
        idx = torch.randint(0, self.data[0].shape[0], (self.batch,), device=self.dev)
        b = self.batch_of(self.data, idx)
        b.cond, b.real, b.mask, b.valid = jitter([b.cond, b.real, b.mask, b.valid], 1.0)
        b.valid = (b.valid > 0.99).float()
        with torch.autocast(**self.amp):
            fake = self.G(generator_input(b.cond, b.real, b.mask, b.valid))
            comp = b.mask * fake + (1 - b.mask) * b.real
            d_real, d_fake = self.D(b.cond, b.real), self.D(b.cond, comp.detach())
            loss_d = (_lsgan(d_real, 1.0) + _lsgan(d_fake, 0.0)) * 0.5
        self.optD.zero_grad(set_to_none=True)
        loss_d.backward()
        self.optD.step()
        with torch.autocast(**self.amp):
            d_fake = self.D(b.cond, comp)
            adv = _lsgan(d_fake, 1.0)
            fm = sum(F.l1_loss(ff.float(), rf.detach().float()) for f, r in zip(d_fake, d_real) for ff, rf in zip(f[1], r[1]))
        weight = b.valid * (b.mask + 0.05)
        l1 = (weight * (fake.float() - b.real).abs()).sum() / (3 * weight.sum()).clamp_min(1.0)
        loss_g = adv + self.args.fm * fm + self.args.l1 * l1
        expr = self.expression_loss(b, comp) if self.judge is not None else torch.zeros((), device=self.dev)
        loss_g = loss_g + self.args.expression * expr
        self.optG.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optG.step()
        with torch.no_grad():
            for e, p in zip(self.G_ema.parameters(), self.G.parameters()):
                e.lerp_(p, 1 - 0.999)
            for e, p in zip(self.G_ema.buffers(), self.G.buffers()):
                e.copy_(p)
        self.step += 1
        return {k: float(v.detach()) for k, v in (("loss_d", loss_d), ("adv", adv), ("fm", fm), ("l1", l1),
                                                        ("expr", expr))}

    def save(self, trained_s: float, final: bool = False) -> None:
        run = self.args.run
        torch.save({"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                    "optG": self.optG.state_dict(), "optD": self.optD.state_dict(), "step": self.step,
                    "trained_s": trained_s}, run / "state.pt.tmp")
        (run / "state.pt.tmp").replace(run / "state.pt")
        torch.save({k: (v.half() if v.is_floating_point() else v).cpu() for k, v in self.G_ema.state_dict().items()},
                   run / "head_generator_ema.pt")
        compact_state(run / "state.pt", run / "head_train.pt")
        with torch.no_grad():
            b = self.batch_of(self.samples, torch.arange(self.samples[0].shape[0], device=self.dev))
            x = generator_input(b.cond, b.real, b.mask, b.valid)
            comp = b.mask * self.G_ema(x) + (1 - b.mask) * b.real
            save_grid(run / ("samples_final.png" if final else f"samples_{self.step:07d}.png"),
                      b.cond, x[:, 3:6], comp, b.real)


def main(argv=None):
    args = parser().parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args, dev)
    budget, t0 = args.minutes * 60, time.time()
    last_ckpt, start_step = t0, trainer.step
    with open(args.run / "log.jsonl", "a") as log:
        while (elapsed := time.time() - t0) < budget and not (args.max_steps and trainer.step >= args.max_steps):
            # Linear decay over the last fifth of this run's budget settles the GAN before a checkpoint.
            lr = args.lr * min(1.0, 5.0 * (1.0 - elapsed / budget))
            for group in (*trainer.optG.param_groups, *trainer.optD.param_groups):
                group["lr"] = lr
            losses = trainer.train_step()
            if trainer.step % 25 == 0:
                rate = (trainer.step - start_step) * trainer.batch / max(elapsed, 1e-6)
                log.write(json.dumps({"step": trainer.step, "t": round(trainer.trained_s + elapsed, 1), "lr": lr,
                                      **{k: round(v, 5) for k, v in losses.items()},
                                      "samples_per_s": round(rate, 2)}) + "\n")
                log.flush()
                print(f"step {trainer.step}  {elapsed / 60:5.1f}/{args.minutes:g} min  "
                      + "  ".join(f"{k} {v:.4f}" for k, v in losses.items()) + f"  {rate:.1f} samples/s", flush=True)
            if time.time() - last_ckpt > args.checkpoint_minutes * 60:
                trainer.save(trainer.trained_s + time.time() - t0)
                last_ckpt = time.time()
    trainer.save(trainer.trained_s + time.time() - t0, final=True)
    print(f"stopped at step {trainer.step}, {(trainer.trained_s + time.time() - t0) / 60:.1f} min trained; {args.run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
