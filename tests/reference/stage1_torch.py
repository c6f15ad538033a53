"""The Stage-I training recipe of `chatpainter train stage1`, written independently in PyTorch
from this repository's network description (crates/chatpainter-nn), for cross-checking what the
dialogue experiment learns (README, "Does dialogue help?").

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
N(1, 0.02), biases 0, LSTM PyTorch default. Recurrent variant: one-layer BiLSTM over the turn
vectors, summary [h_fwd at the last turn, h_bwd at the first]. Data: random 76 -> 64 crop, no
flip (flip=false), one random caption per image per load; text standardised per dimension with
the training split's statistics (text_norm = "standardize"). Generation: eval mode (running
BatchNorm statistics), the first caption. Seeds and random streams differ from the Rust trainer
(only the recipe is shared), so numbers agree statistically, not bit for bit.
"""

import argparse
import glob
import io
import os

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
from PIL import Image


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


class CA(nn.Module):
    def __init__(self, t, nc):
        super().__init__()
        self.fc = nn.Linear(t, 2 * nc)
        self.nc = nc

    def forward(self, text):
        x = torch.relu(self.fc(text))
        mu, logvar = x[:, : self.nc], x[:, self.nc :]
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), mu, logvar


def up_block(cin, cout):
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(True),
    )


class Generator(nn.Module):
    def __init__(self, t, nc, z, gf, variant, turn_dim, hidden):
        super().__init__()
        self.lstm = None
        if variant == "chatpainter-recurrent":
            self.lstm = nn.LSTM(turn_dim, hidden, batch_first=True, bidirectional=True)
        self.ca = CA(t, nc)
        ngf = 8 * gf
        self.ngf = ngf
        self.fc = nn.Sequential(
            nn.Linear(z + nc, ngf * 16, bias=False), nn.BatchNorm1d(ngf * 16), nn.ReLU(True)
        )
        self.up = nn.Sequential(
            up_block(ngf, ngf // 2),
            up_block(ngf // 2, ngf // 4),
            up_block(ngf // 4, ngf // 8),
            up_block(ngf // 8, ngf // 16),
        )
        self.img = nn.Sequential(nn.Conv2d(ngf // 16, 3, 3, 1, 1, bias=False), nn.Tanh())

    def text(self, captions, dialogue, lengths):
        if self.lstm is None:
            return captions if dialogue is None else torch.cat([captions, dialogue], 1)
        packed = nn.utils.rnn.pack_padded_sequence(
            dialogue, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        return torch.cat([captions, h[0], h[1]], 1)

    def forward(self, captions, dialogue, lengths, noise):
        c, mu, logvar = self.ca(self.text(captions, dialogue, lengths))
        h = self.fc(torch.cat([noise, c], 1)).view(-1, self.ngf, 4, 4)
        return self.img(self.up(h)), mu, logvar


class Discriminator(nn.Module):
    def __init__(self, df, nc):
        super().__init__()
        lr = lambda: nn.LeakyReLU(0.2, True)
        self.encode = nn.Sequential(
            nn.Conv2d(3, df, 4, 2, 1, bias=False), lr(),
            nn.Conv2d(df, df * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(df * 2), lr(),
            nn.Conv2d(df * 2, df * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(df * 4), lr(),
            nn.Conv2d(df * 4, df * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(df * 8), lr(),
        )
        self.joint = nn.Sequential(
            nn.Conv2d(df * 8 + nc, df * 8, 3, 1, 1, bias=False), nn.BatchNorm2d(df * 8), lr()
        )
        self.logit = nn.Sequential(nn.Conv2d(df * 8, 1, 4, 4), nn.Sigmoid())

    def cond(self, features, c):
        tiled = c.view(c.shape[0], -1, 1, 1).repeat(1, 1, 4, 4)
        return self.logit(self.joint(torch.cat([features, tiled], 1))).view(-1)


def weights_init(m):
    name = m.__class__.__name__
    if "Conv" in name or name == "Linear":
        m.weight.data.normal_(0.0, 0.02)
        if m.bias is not None:
            m.bias.data.fill_(0.0)
    elif "BatchNorm" in name:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0.0)


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
    t_dim = cap_dim + (2 * a.hidden if recurrent else dia_dim)
    g = Generator(t_dim, a.cond, 100, a.gf, a.variant, dia_dim, a.hidden)
    d = Discriminator(a.df, a.cond)
    for m in (g.ca, g.fc, g.up, g.img):
        m.apply(weights_init)
    d.apply(weights_init)
    opt_g = torch.optim.Adam([p for p in g.parameters() if p.requires_grad], 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()

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
        cond = mu.detach()
        real_f, fake_f = d.encode(real), d.encode(fake.detach())
        b = len(sel)
        ones, zeros = torch.ones(b), torch.zeros(b)
        err_real = bce(d.cond(real_f, cond), ones)
        err_wrong = bce(d.cond(real_f[: b - 1], cond[1:]), zeros[1:])
        err_fake = bce(d.cond(fake_f, cond), zeros)
        err_d = err_real + (err_wrong + err_fake) * 0.5
        opt_d.zero_grad()
        err_d.backward()
        opt_d.step()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()
        err_g = bce(d.cond(d.encode(fake), cond), ones) + a.kl * kl
        opt_g.zero_grad()
        err_g.backward()
        opt_g.step()
        if step % 100 == 0:
            print(f"step {step} d {err_d.item():.3f} wrong {err_wrong.item():.3f} g {err_g.item():.3f} kl {kl.item():.4f}", flush=True)

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
                Image.fromarray(p).save(os.path.join(a.out, f"{i}.png"))
    print(f"wrote {len(test_ids)} images to {a.out}")


if __name__ == "__main__":
    main()
