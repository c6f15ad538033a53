"""Times one training step of our Stage-I or Stage-II GAN in PyTorch, the way our trainer's
`train_step` (crates/chatpainter-train/src/trainer.rs) does it, for a side-by-side comparison with
`chatpainter bench stage1|stage2`. The networks come from `stackgan_torch.py`.

One step, as ours: the batch's inputs (drawn on the host before the clock starts) are copied to
the device; one G forward with the given noise and CA eps (Stage-II: two eps, the inner Stage-I
CA's and its own); the D loss on real / wrong / detached fake with cond = mu.detach(); D backward
and Adam step; the G loss (adversarial + 2 KL) on the same fakes through the just-updated D; G
backward and Adam step (only trainable parameters: the Stage-I G and BiLSTM are frozen in
Stage-II). The loss values are read back to the host in both phases (ours does, for its NaN
guard), which also synchronises the device. Two random input sets alternate, as in our benchmark.
Adam(lr 2e-4, betas 0.5 / 0.999, eps 1e-8).

Run (the venv of tests/reference/README.md):

    OMP_WAIT_POLICY=PASSIVE python tests/reference/step_torch.py --stage 1 --variant stackgan \
        --batch 16 --gf 32 --df 32 --threads 2 --warmup 2 --steps 5
    python tests/reference/step_torch.py --stage 2 --variant stackgan --batch 4 --gf 32 \
        --s2-gf 32 --s2-df 16 --r-num 2 --warmup 1 --steps 3

It prints one JSON line on stdout (see `main`). `--precision bf16` wraps the forward passes in
`torch.autocast(dtype=bfloat16)`: matmuls and convolutions run in bfloat16 on float32 weights,
the losses are computed in float32 outside autocast, backward runs outside it (autograd follows
the forward's dtypes) and Adam updates float32 weights; no loss scaling is needed for bfloat16.
`--tf32` allows TF32 for CUDA matmuls and cuDNN convolutions; without it both are switched off
(PyTorch allows TF32 in cuDNN convolutions by default), so `f32` means true float32.
`--tf32-convs` allows it in cuDNN convolutions only: LibTorch's default, hence what our `cuda`
training runs (which do not change it) compute with.
`flops_per_step` counts one extra, untimed step with `torch.utils.flop_counter.FlopCounterMode`
(matmuls and convolutions, forward and backward of both phases; on the CPU the LSTM runs as
matmuls and is counted; cuDNN's fused LSTM on CUDA may have no FLOP formula and be left out, not
checked on a GPU yet).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stackgan_torch as sg  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", type=int, choices=[1, 2], default=1)
    ap.add_argument("--variant", choices=sg.VARIANTS, default="stackgan")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gf", type=int, default=32, help="Stage-I gf (ngf = 8 gf)")
    ap.add_argument("--df", type=int, default=32, help="Stage-I D width (Stage-I only)")
    ap.add_argument("--s2-gf", type=int, default=128, help="Stage-II base width ngf")
    ap.add_argument("--s2-df", type=int, default=64, help="Stage-II D width")
    ap.add_argument("--r-num", type=int, default=4, help="Stage-II residual blocks")
    ap.add_argument(
        "--stage1-bn-running",
        action="store_true",
        help="Stage-II: frozen Stage-I BatchNorms in eval mode (ours: stage1_batch_norm = "
        "running-stats); default train mode, as ours by default",
    )
    ap.add_argument("--caption-dim", type=int, default=1024)
    ap.add_argument("--dialogue-dim", type=int, default=4800, help="dialogue or turn vector width")
    ap.add_argument("--turns", type=int, default=10, help="turn slots (recurrent)")
    ap.add_argument("--rnn-hidden", type=int, default=1024, help="BiLSTM hidden per direction")
    ap.add_argument("--cond-dim", type=int, default=128)
    ap.add_argument("--z-dim", type=int, default=100)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmul/conv on CUDA")
    ap.add_argument(
        "--tf32-convs",
        action="store_true",
        help="allow TF32 in cuDNN convolutions only (LibTorch's default, so what our CUDA runs do)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    a = ap.parse_args(argv)
    positive = ["batch", "gf", "df", "s2_gf", "s2_df", "caption_dim", "cond_dim", "z_dim", "steps"]
    if a.variant != "stackgan":
        positive.append("dialogue_dim")
    if a.variant == "chatpainter-recurrent":
        positive += ["turns", "rnn_hidden"]
    for key in positive:
        if getattr(a, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(a, key)}")
    if a.batch < 2:
        ap.error(f"--batch {a.batch}: the wrong pairs need at least 2 samples")
    if a.gf % 2:
        ap.error(f"--gf {a.gf}: must be even (the last Stage-I block has 8 gf / 16 channels)")
    if a.s2_gf % 4:
        ap.error(f"--s2-gf {a.s2_gf}: must be a multiple of 4 (the last block has ngf / 4)")
    if a.warmup < 0 or a.r_num < 0:
        ap.error("--warmup and --r-num must not be negative")
    if a.threads is not None and a.threads < 1:
        ap.error(f"--threads {a.threads}: must be at least 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is false on this machine")
    return a


def host_inputs(a, draws, stream):
    """One step's inputs on the host: images uniform in [-1, 1], caption and dialogue vectors,
    noise and CA eps ~ N(0, 1). Recurrent: every fourth sample has fewer turns (zero padded)."""
    gen = torch.Generator().manual_seed(a.seed * 1000 + 100 + stream)
    b, side = a.batch, 64 if a.stage == 1 else 256
    x = {
        "real": torch.rand(b, 3, side, side, generator=gen) * 2 - 1,
        "captions": torch.randn(b, a.caption_dim, generator=gen),
        "dialogue": None,
        "lengths": None,
    }
    if a.variant == "chatpainter-nonrecurrent":
        x["dialogue"] = torch.randn(b, a.dialogue_dim, generator=gen)
    elif a.variant == "chatpainter-recurrent":
        t = a.turns
        lengths = [1 + i % t if i % 4 == 3 else t for i in range(b)]
        turns = torch.randn(b, t, a.dialogue_dim, generator=gen)
        for i, n in enumerate(lengths):
            turns[i, n:] = 0
        x["dialogue"], x["lengths"] = turns, torch.tensor(lengths)
    x["noise"] = torch.randn(b, a.z_dim, generator=gen)
    x["eps"] = [torch.randn(b, a.cond_dim, generator=gen) for _ in range(draws)]
    return x


def build(a, device):
    torch.manual_seed(a.seed)
    gnet, d = sg.build_stage1(
        a.variant, a.caption_dim, a.dialogue_dim, a.rnn_hidden, a.cond_dim, a.z_dim, a.gf, a.df,
        device,
    )
    if a.stage == 2:
        gnet, d = sg.build_stage2(
            gnet, a.cond_dim, a.s2_gf, a.s2_df, a.r_num, not a.stage1_bn_running, device
        )
    gnet.train()
    d.train()
    return gnet, d


class Step:
    """Our `train_step` on fixed networks and optimisers."""

    def __init__(self, a, gnet, d, device):
        self.gnet, self.d, self.device = gnet, d, device
        adam = dict(lr=a.lr, betas=(0.5, 0.999), eps=1e-8)
        self.opt_g = torch.optim.Adam([p for p in gnet.parameters() if p.requires_grad], **adam)
        self.opt_d = torch.optim.Adam(d.parameters(), **adam)
        self.bf16 = a.precision == "bf16"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def __call__(self, host):
        dev = self.device
        to = lambda t: None if t is None else t.to(dev)
        real, caps, dia = to(host["real"]), to(host["captions"]), to(host["dialogue"])
        noise, eps = to(host["noise"]), [to(e) for e in host["eps"]]
        with self.autocast():
            fake, mu, logvar = self.gnet(caps, dia, host["lengths"], noise, eps)
            dl = sg.discriminator_loss(self.d, real, fake, mu)
        self.opt_d.zero_grad(set_to_none=True)
        dl["total"].backward()
        d_terms = torch.stack([dl[k].detach() for k in ("total", "real", "wrong", "fake")]).tolist()
        self.opt_d.step()
        with self.autocast():
            gl = sg.generator_loss(self.d, fake, mu, logvar)
        self.opt_g.zero_grad(set_to_none=True)
        gl["total"].backward()
        g_terms = torch.stack([gl[k].detach() for k in ("total", "adversarial", "kl")]).tolist()
        self.opt_g.step()
        return {"d_loss": d_terms[0], "g_loss": g_terms[0], "kl": g_terms[2]}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(step, host):
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    counter = FlopCounterMode(display=False)
    with counter:
        step(host)
    return int(counter.get_total_flops())


def main(argv=None):
    a = parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32 or a.tf32_convs
        torch.backends.cudnn.benchmark = False
    gnet, d = build(a, device)
    step = Step(a, gnet, d, device)
    draws = gnet.CA_DRAWS
    inputs = [host_inputs(a, draws, 1), host_inputs(a, draws, 2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses, finite = [], None, True
    for i in range(a.warmup + a.steps):
        sync(device)
        t0 = time.perf_counter()
        losses = step(inputs[i % 2])
        sync(device)
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        finite = finite and all(math.isfinite(v) for v in losses.values())
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    flops = None if a.no_flops else count_flops(step, inputs[0])
    median = statistics.median(times)
    widths = {
        "z_dim": a.z_dim,
        "caption_dim": a.caption_dim,
        "dialogue_dim": 0 if a.variant == "stackgan" else a.dialogue_dim,
        "turns": a.turns if a.variant == "chatpainter-recurrent" else 0,
        "rnn_hidden": a.rnn_hidden if a.variant == "chatpainter-recurrent" else 0,
        "cond_dim": a.cond_dim,
        "gf_dim": a.gf,
    }
    if a.stage == 1:
        widths["df_dim"] = a.df
    else:
        widths.update(
            s2_gf_dim=a.s2_gf,
            s2_df_dim=a.s2_df,
            r_num=a.r_num,
            stage1_bn_batch_stats=not a.stage1_bn_running,
        )
    rnn = gnet.dialogue
    out = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": a.device,
        "device_name": "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device),
        "stage": a.stage,
        "variant": a.variant,
        "precision": a.precision,
        "tf32": a.tf32,
        "tf32_convs": a.tf32 or a.tf32_convs,
        "batch": a.batch,
        "widths": widths,
        "params_g": sg.trainable(gnet),
        "params_d": sg.trainable(d),
        "params_detail": {
            "g_frozen": sg.count(p for p in gnet.parameters() if not p.requires_grad),
            "dialogue_rnn": 0 if rnn is None else sg.count(rnn.parameters()),
        },
        "threads": torch.get_num_threads(),
        "warmup": a.warmup,
        "steps": a.steps,
        "step_ms": [round(t, 3) for t in times],
        "median_ms": round(median, 3),
        "images_per_s": round(a.batch / (median / 1e3), 3),
        "flops_per_step": flops,
        "peak_gpu_mib": None if peak is None else round(peak, 1),
        "losses": losses,
        "finite": finite,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
