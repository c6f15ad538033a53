"""The Stage-I training recipe of `chatpainter train stage1`, written independently in PyTorch
from this repository's network description (crates/chatpainter-nn), for cross-checking what the
dialogue experiment learns (README, "Does dialogue help?"). The networks, their initialisation and
the losses are those of `stackgan_torch.py` (the one PyTorch description of our model).

It trains on a finished run's artifacts (`ingest/images/76/train/*.parquet`,
`embed/embeddings.parquet`) and writes one generated 64x64 PNG per test image (`<image_id>.png`,
first caption, whole dialogue) that `chatpainter score-scenes` scores against the ground truth:

    python tests/reference/stage1_torch.py runs/dialogue-chatpainter-recurrent out/ \
        --variant chatpainter-recurrent --steps 3000
    chatpainter score-scenes out/ --attributes runs/dialogue-chatpainter-recurrent/synth/attributes.json

The recipe (as trainer.rs / chatpainter-nn): CA = Linear(T, 2Nc) + ReLU over the whole output,
c = mu + eps * exp(logvar / 2); G = Linear(z + Nc, 16 ngf, no bias) + BN1d + ReLU, four
(nearest x2, conv3x3 no bias, BN, ReLU) blocks ngf -> ngf/16, conv3x3 -> 3, tanh; D = four
4x4/s2 convs (BN from the second), LeakyReLU 0.2, then the conditional head: concat the tiled
condition (D's condition is G's mu, detached), conv3x3 + BN + LeakyReLU, conv 4x4/s4 (bias),
sigmoid. Losses: BCE real / wrong (real i with condition i+1) / fake, D total real +
(wrong + fake) / 2; G total BCE(D(fake), 1) + kl_coeff * KL. One D step, then one G step on the
same fakes through the updated D. Adam(0.5, 0.999), lr 2e-4. Weights N(0, 0.02), BN gamma
N(1, 0.02), Linear and BN biases 0, the logit conv's bias and the LSTM at PyTorch's defaults
(until this file imported stackgan_torch.py it zeroed that conv bias too; ours never did).
Recurrent variant: one-layer BiLSTM over the turn vectors, summary [h_fwd at the last turn,
h_bwd at the first]. Data: random 76 -> 64 crop, no
flip (flip=false), one random caption per image per load; text standardised per dimension with
the training split's statistics (text_norm = "standardize"). Generation: eval mode (running
BatchNorm statistics), the first caption. Seeds and random streams differ from the Rust trainer
(only the recipe is shared), so numbers agree statistically, not bit for bit.
"""

import argparse
import glob
import io
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stackgan_torch as sg  # noqa: E402


def load_split(run, split):
    emb = pq.read_table(os.path.join(run, "embed/embeddings.parquet")).to_pydict()
    rows = {}
    for i, image_id in enumerate(emb["image_id"]):
        if emb["split"][i] == split:
            rows[image_id] = {
                "captions": np.asarray(emb["captions"][i], dtype=np.float32),
                "dialogue": np.asarray(emb["dialogue"][i], dtype=np.float32),
                "turns": np.asarray(emb["turns"][i], dtype=np.float32),
            }
    images = {}
    for path in sorted(glob.glob(os.path.join(run, f"ingest/images/76/{split}/*.parquet"))):
        t = pq.read_table(path).to_pydict()
        for image_id, png in zip(t["image_id"], t["png"]):
            if image_id in rows:
                images[image_id] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    ids = sorted(i for i in rows if i in images)
    return ids, rows, images


def moments(vectors):
    v = np.concatenate([x.reshape(-1, x.shape[-1]) for x in vectors]).astype(np.float64)
    mean, std = v.mean(0), v.std(0)
    inv = np.where(std < 1e-6, 0.0, 1.0 / np.maximum(std, 1e-12))
    return mean.astype(np.float32), inv.astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gf", type=int, default=16)
    ap.add_argument("--df", type=int, default=16)
    ap.add_argument("--cond", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--kl", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-norm", choices=["standardize", "none"], default="standardize")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)

    ids, rows, images = load_split(a.run, "train")
    recurrent = a.variant == "chatpainter-recurrent"
    uses_dialogue = a.variant != "stackgan"
    cap_m = moments([rows[i]["captions"] for i in ids])
    key = "turns" if recurrent else "dialogue"
    dia_m = moments([rows[i][key] for i in ids]) if uses_dialogue else None
    if a.text_norm == "none":
        std = lambda v, m: v
    else:
        std = lambda v, m: (v - m[0]) * m[1]
    cap_dim = cap_m[0].shape[0]
    dia_dim = dia_m[0].shape[0] if uses_dialogue else 0
    g, d = sg.build_stage1(a.variant, cap_dim, dia_dim, a.hidden, a.cond, 100, a.gf, a.df)
    opt_g = torch.optim.Adam([p for p in g.parameters() if p.requires_grad], 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))

    def batch(sel, train):
        imgs, caps, dias, lens = [], [], [], []
        for i in sel:
            r = rows[i]
            if train:
                x0, y0 = rng.integers(0, 13, 2)
                k = rng.integers(0, len(r["captions"]))
            else:
                x0 = y0 = 6
                k = 0
            imgs.append(images[i][y0 : y0 + 64, x0 : x0 + 64])
            caps.append(std(r["captions"][k], cap_m))
            if uses_dialogue:
                dias.append(std(r[key], dia_m))
                lens.append(len(r["turns"]))
        real = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        caps = torch.from_numpy(np.stack(caps))
        if not uses_dialogue:
            return real, caps, None, None
        if recurrent:
            t = max(lens)
            pad = np.zeros((len(sel), t, dia_dim), np.float32)
            for b, v in enumerate(dias):
                pad[b, : len(v)] = v
            return real, caps, torch.from_numpy(pad), torch.tensor(lens)
        return real, caps, torch.from_numpy(np.stack(dias)), None

    order, cursor = rng.permutation(len(ids)), 0
    for step in range(1, a.steps + 1):
        if cursor + a.batch > len(ids):
            order, cursor = rng.permutation(len(ids)), 0
        sel = [ids[j] for j in order[cursor : cursor + a.batch]]
        cursor += a.batch
        real, caps, dia, lens = batch(sel, True)
        noise = torch.randn(len(sel), 100)
        fake, mu, logvar = g(caps, dia, lens, noise)
        dl = sg.discriminator_loss(d, real, fake, mu)
        opt_d.zero_grad()
        dl["total"].backward()
        opt_d.step()
        gl = sg.generator_loss(d, fake, mu, logvar, a.kl)
        opt_g.zero_grad()
        gl["total"].backward()
        opt_g.step()
        if step % 100 == 0:
            print(
                f"step {step} d {dl['total'].item():.3f} wrong {dl['wrong'].item():.3f} "
                f"g {gl['total'].item():.3f} kl {gl['kl'].item():.4f}",
                flush=True,
            )

    test_ids, rows_t, images_t = load_split(a.run, "test")
    rows.update(rows_t)
    images.update(images_t)
    os.makedirs(a.out, exist_ok=True)
    g.eval()
    with torch.no_grad():
        for k in range(0, len(test_ids), 100):
            sel = test_ids[k : k + 100]
            _, caps, dia, lens = batch(sel, False)
            fake, _, _ = g(caps, dia, lens, torch.randn(len(sel), 100))
            pix = ((fake + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            for i, p in zip(sel, pix):
                # Written under a temporary name and renamed: never a half-written PNG.
                path = os.path.join(a.out, f"{i}.png")
                Image.fromarray(p).save(path + ".tmp", format="PNG")
                os.replace(path + ".tmp", path)
    print(f"wrote {len(test_ids)} images to {a.out}")


if __name__ == "__main__":
    main()
