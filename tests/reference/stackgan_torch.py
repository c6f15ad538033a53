"""The ChatPainter / StackGAN networks and losses of this repository, written independently in
PyTorch from our own network description (crates/chatpainter-nn and how crates/chatpainter-train
composes it). The one PyTorch description of our model: `stage1_torch.py` trains with it and
`step_torch.py` times one training step with it.

Layer for layer (module and attribute names are the StackGAN-Pytorch `state_dict` names that our
Burn modules map to one-to-one):

- CA (`ca_net`): Linear(T -> 2 Nc, bias), ReLU over the whole output, mu | logvar halves,
  c = mu + eps * exp(logvar / 2) with fresh eps on every call unless eps is given.
- Stage-I G: CA, fc = Linear(Nz + Nc -> 16 ngf, no bias) + BatchNorm1d + ReLU (input [noise | c]),
  view [B, ngf, 4, 4] with ngf = 8 gf, four up blocks (nearest x2, conv3x3 no bias, BN, ReLU)
  ngf -> ngf/16, conv3x3 -> 3 (no bias), tanh.
- Stage-I D: four conv 4x4/s2/p1 (no bias; BN from the second), LeakyReLU(0.2), giving 8 df x 4 x 4;
  conditional head: [features | condition tiled 4x4] -> conv3x3 + BN + LeakyReLU -> conv 4x4/s4
  (the only biased conv) -> sigmoid.
- Stage-II G: the frozen Stage-I G runs on the same text and noise with its own CA draw, its image
  is detached; encoder conv3x3(3 -> ngf) + ReLU, two conv 4x4/s2 + BN + ReLU (-> 4 ngf x 16 x 16);
  its own CA; hr_joint conv3x3([code | c tiled 16x16] -> 4 ngf) + BN + ReLU; r_num residual blocks
  relu(x + (conv3x3, BN, ReLU, conv3x3, BN)(x)); four up blocks 4 ngf -> ngf/4; conv3x3 -> 3, tanh.
  Here ngf is the Stage-II gf itself (not 8 gf). Trainable: everything but the Stage-I G (and, in
  the recurrent variant, the Stage-I BiLSTM, also frozen). The frozen Stage-I BatchNorms run in
  train mode by default (batch statistics, running statistics keep moving, as the StackGAN code);
  `stage1_bn_batch_stats=False` puts them in eval mode (running statistics).
- Stage-II D: six conv 4x4/s2 (df -> 32 df, BN from the second), conv3x3 32 df -> 16 df + BN,
  conv3x3 16 df -> 8 df + BN, all LeakyReLU(0.2); the conditional head as Stage-I and an
  unconditional head conv 4x4/s4 (bias) -> sigmoid.
- Dialogue: `stackgan` has none; `chatpainter-nonrecurrent` concatenates one dialogue vector to
  the caption; `chatpainter-recurrent` runs a one-layer BiLSTM over the turn vectors (packed by
  length) and concatenates [h_fwd at the last present turn | h_bwd at the first turn]. The BiLSTM
  trains with G in Stage-I (it sits in G's optimiser) and is frozen in Stage-II.

Initialisation (ours, after the StackGAN rule keyed on layer class): conv weights N(0, 0.02) with
the one conv bias left at PyTorch's default; Linear weights N(0, 0.02), biases 0; BatchNorm gamma
N(1, 0.02), beta 0; the LSTM keeps PyTorch's default U(+-1/sqrt(H)). BatchNorm eps 1e-5,
momentum 0.1.

Losses: BCE on probabilities (PyTorch clamps each log at -100, as ours). D: real, wrong (real
image i with the condition of i+1, B-1 pairs, reusing the real features) and fake (detached), the
condition being G's mu detached; Stage-I total real + (wrong + fake) / 2, Stage-II
(real + uncond_real) / 2 + (fake + wrong + uncond_fake) / 3. G: BCE(D(fake), 1) (plus the
unconditional term in Stage-II, a sum) + kl_coeff * KL, KL = -0.5 mean(1 + logvar - mu^2 -
exp(logvar)) over batch x Nc.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("stackgan", "chatpainter-nonrecurrent", "chatpainter-recurrent")
LEAKY_SLOPE = 0.2
INIT_STD = 0.02
KL_COEFF = 2.0


def conv3x3(cin, cout):
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


def conv4x4_down(cin, cout):
    return nn.Conv2d(cin, cout, 4, 2, 1, bias=False)


def leaky():
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def up_block(cin, cout):
    """Nearest x2, conv3x3, BN, ReLU: `upsampleN.{1,2}` hold the weights."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        conv3x3(cin, cout),
        nn.BatchNorm2d(cout),
        nn.ReLU(True),
    )


def tile(c, size):
    return c.view(c.shape[0], -1, 1, 1).expand(-1, -1, size, size)


class CANet(nn.Module):
    """Conditioning augmentation: `forward(text, eps=None) -> (c, mu, logvar)`."""

    def __init__(self, text_dim, cond_dim):
        super().__init__()
        self.fc = nn.Linear(text_dim, 2 * cond_dim, bias=True)
        self.cond_dim = cond_dim

    def forward(self, text, eps=None):
        x = F.relu(self.fc(text))
        mu, logvar = x[:, : self.cond_dim], x[:, self.cond_dim :]
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(
            conv3x3(c, c), nn.BatchNorm2d(c), nn.ReLU(True), conv3x3(c, c), nn.BatchNorm2d(c)
        )

    def forward(self, x):
        # The ReLU comes after the identity add.
        return F.relu(self.block(x) + x)


class CondLogits(nn.Module):
    """Conditional head: `forward(features [B, 8df, 4, 4], cond [B, Nc]) -> [B]` probabilities."""

    def __init__(self, feat, cond_dim):
        super().__init__()
        self.outlogits = nn.Sequential(
            conv3x3(feat + cond_dim, feat),
            nn.BatchNorm2d(feat),
            leaky(),
            nn.Conv2d(feat, 1, kernel_size=4, stride=4),
            nn.Sigmoid(),
        )

    def forward(self, h, c):
        return self.outlogits(torch.cat([h, tile(c, h.shape[2])], 1)).view(-1)


class UncondLogits(nn.Module):
    def __init__(self, feat):
        super().__init__()
        self.outlogits = nn.Sequential(nn.Conv2d(feat, 1, kernel_size=4, stride=4), nn.Sigmoid())

    def forward(self, h):
        return self.outlogits(h).view(-1)


class Stage1G(nn.Module):
    """`forward(text, noise, eps=None) -> (fake [B,3,64,64], mu, logvar)`."""

    def __init__(self, text_dim, cond_dim, z_dim, gf_dim):
        super().__init__()
        ngf = 8 * gf_dim
        self.ngf = ngf
        self.ca_net = CANet(text_dim, cond_dim)
        self.fc = nn.Sequential(
            nn.Linear(z_dim + cond_dim, ngf * 16, bias=False), nn.BatchNorm1d(ngf * 16), nn.ReLU(True)
        )
        self.upsample1 = up_block(ngf, ngf // 2)
        self.upsample2 = up_block(ngf // 2, ngf // 4)
        self.upsample3 = up_block(ngf // 4, ngf // 8)
        self.upsample4 = up_block(ngf // 8, ngf // 16)
        self.img = nn.Sequential(conv3x3(ngf // 16, 3), nn.Tanh())

    def forward(self, text, noise, eps=None):
        c, mu, logvar = self.ca_net(text, eps)
        h = self.fc(torch.cat([noise, c], 1)).view(-1, self.ngf, 4, 4)
        h = self.upsample4(self.upsample3(self.upsample2(self.upsample1(h))))
        return self.img(h), mu, logvar


class Stage1D(nn.Module):
    """`forward(image) -> features [B, 8df, 4, 4]`; `get_cond_logits(features, cond)`."""

    def __init__(self, df_dim, cond_dim):
        super().__init__()
        ndf = df_dim
        self.encode_img = nn.Sequential(
            conv4x4_down(3, ndf), leaky(),
            conv4x4_down(ndf, ndf * 2), nn.BatchNorm2d(ndf * 2), leaky(),
            conv4x4_down(ndf * 2, ndf * 4), nn.BatchNorm2d(ndf * 4), leaky(),
            conv4x4_down(ndf * 4, ndf * 8), nn.BatchNorm2d(ndf * 8), leaky(),
        )  # fmt: skip
        self.get_cond_logits = CondLogits(ndf * 8, cond_dim)
        self.get_uncond_logits = None

    def forward(self, image):
        return self.encode_img(image)


class Stage2G(nn.Module):
    """`forward(text, noise, eps1=None, eps2=None) -> (fake [B,3,256,256], mu, logvar)`; eps1 is
    the inner Stage-I CA's noise, eps2 Stage-II's own; mu and logvar are Stage-II's."""

    def __init__(self, stage1_g, cond_dim, gf_dim, r_num, stage1_bn_batch_stats=True):
        super().__init__()
        ngf = gf_dim
        self.STAGE1_G = stage1_g
        self.stage1_bn_batch_stats = stage1_bn_batch_stats
        for p in self.STAGE1_G.parameters():
            p.requires_grad_(False)
        self.ca_net = CANet(stage1_g.ca_net.fc.in_features, cond_dim)
        self.encoder = nn.Sequential(
            conv3x3(3, ngf), nn.ReLU(True),
            conv4x4_down(ngf, ngf * 2), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            conv4x4_down(ngf * 2, ngf * 4), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        )  # fmt: skip
        self.hr_joint = nn.Sequential(
            conv3x3(cond_dim + ngf * 4, ngf * 4), nn.BatchNorm2d(ngf * 4), nn.ReLU(True)
        )
        self.residual = nn.Sequential(*[ResBlock(ngf * 4) for _ in range(r_num)])
        self.upsample1 = up_block(ngf * 4, ngf * 2)
        self.upsample2 = up_block(ngf * 2, ngf)
        self.upsample3 = up_block(ngf, ngf // 2)
        self.upsample4 = up_block(ngf // 2, ngf // 4)
        self.img = nn.Sequential(conv3x3(ngf // 4, 3), nn.Tanh())

    def train(self, mode=True):
        super().train(mode)
        if not self.stage1_bn_batch_stats:
            self.STAGE1_G.eval()
        return self

    def forward(self, text, noise, eps1=None, eps2=None):
        stage1_img, _, _ = self.STAGE1_G(text, noise, eps1)
        encoded = self.encoder(stage1_img.detach())
        c, mu, logvar = self.ca_net(text, eps2)
        h = self.hr_joint(torch.cat([encoded, tile(c, encoded.shape[2])], 1))
        h = self.residual(h)
        h = self.upsample4(self.upsample3(self.upsample2(self.upsample1(h))))
        return self.img(h), mu, logvar


class Stage2D(nn.Module):
    def __init__(self, df_dim, cond_dim):
        super().__init__()
        ndf = df_dim
        layers = [conv4x4_down(3, ndf), leaky()]
        for k in range(5):
            cin, cout = ndf * 2**k, ndf * 2 ** (k + 1)
            layers += [conv4x4_down(cin, cout), nn.BatchNorm2d(cout), leaky()]
        layers += [conv3x3(ndf * 32, ndf * 16), nn.BatchNorm2d(ndf * 16), leaky()]
        layers += [conv3x3(ndf * 16, ndf * 8), nn.BatchNorm2d(ndf * 8), leaky()]
        self.encode_img = nn.Sequential(*layers)
        self.get_cond_logits = CondLogits(ndf * 8, cond_dim)
        self.get_uncond_logits = UncondLogits(ndf * 8)

    def forward(self, image):
        return self.encode_img(image)


class DialogueEncoder(nn.Module):
    """One-layer BiLSTM over turn vectors: `forward(turns [B, T, D], lengths [B]) -> [B, 2H]`."""

    def __init__(self, turn_dim, hidden):
        super().__init__()
        self.lstm = nn.LSTM(turn_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, turns, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(
            turns, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        return torch.cat([h[0], h[1]], 1)


def text_input(captions, dialogue, lengths, encoder):
    """The CA input [caption | dialogue vector or BiLSTM summary]."""
    if dialogue is None:
        return captions
    if encoder is None:
        return torch.cat([captions, dialogue], 1)
    return torch.cat([captions, encoder(dialogue, lengths)], 1)


class Stage1Generator(nn.Module):
    """What G's optimiser updates in Stage-I: Stage-I G and (recurrent) the BiLSTM.
    `forward(captions, dialogue, lengths, noise, eps=None) -> (fake, mu, logvar)`."""

    CA_DRAWS = 1

    def __init__(self, g, dialogue=None):
        super().__init__()
        self.g = g
        self.dialogue = dialogue

    def forward(self, captions, dialogue, lengths, noise, eps=None):
        text = text_input(captions, dialogue, lengths, self.dialogue)
        return self.g(text, noise, None if eps is None else eps[0])


class Stage2Generator(nn.Module):
    """Stage-II G around the frozen Stage-I G, plus the frozen Stage-I BiLSTM (recurrent).
    `forward(captions, dialogue, lengths, noise, eps=None)`, eps = [Stage-I CA, Stage-II CA]."""

    CA_DRAWS = 2

    def __init__(self, g, dialogue=None):
        super().__init__()
        self.g = g
        self.dialogue = dialogue
        if dialogue is not None:
            for p in dialogue.parameters():
                p.requires_grad_(False)

    def forward(self, captions, dialogue, lengths, noise, eps=None):
        text = text_input(captions, dialogue, lengths, self.dialogue)
        eps1, eps2 = (None, None) if eps is None else eps
        return self.g(text, noise, eps1, eps2)


def weights_init(module):
    """Our initialisation (see the module docstring); apply with `net.apply(weights_init)`."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, INIT_STD)
        nn.init.zeros_(module.bias)


def text_dim(variant, caption_dim, dialogue_dim, rnn_hidden):
    if variant == "stackgan":
        return caption_dim
    if variant == "chatpainter-nonrecurrent":
        return caption_dim + dialogue_dim
    if variant == "chatpainter-recurrent":
        return caption_dim + 2 * rnn_hidden
    raise ValueError(f"unknown variant `{variant}` (known: {', '.join(VARIANTS)})")


def build_stage1(variant, caption_dim, dialogue_dim, rnn_hidden, cond_dim, z_dim, gf_dim, df_dim,
                 device=None):
    """Stage-I (G side, D) with our initialisation; draws come from torch's global RNG in the
    order G, BiLSTM, D (as our trainer)."""
    t = text_dim(variant, caption_dim, dialogue_dim, rnn_hidden)
    g = Stage1G(t, cond_dim, z_dim, gf_dim).to(device)
    g.apply(weights_init)
    rnn = None
    if variant == "chatpainter-recurrent":
        rnn = DialogueEncoder(dialogue_dim, rnn_hidden).to(device)
    d = Stage1D(df_dim, cond_dim).to(device)
    d.apply(weights_init)
    return Stage1Generator(g, rnn), d


def build_stage2(stage1, cond_dim, gf_dim, df_dim, r_num, stage1_bn_batch_stats=True, device=None):
    """Stage-II (G side, D) around a Stage-I G side, whose G and BiLSTM are moved in and frozen;
    fresh Stage-II layers with our initialisation."""
    g = Stage2G(stage1.g, cond_dim, gf_dim, r_num, stage1_bn_batch_stats).to(device)
    for name, m in g.named_children():
        if name != "STAGE1_G":
            m.apply(weights_init)
    d = Stage2D(df_dim, cond_dim).to(device)
    d.apply(weights_init)
    return Stage2Generator(g, stage1.dialogue), d


def count(params):
    return sum(p.numel() for p in params)


def trainable(module):
    return count(p for p in module.parameters() if p.requires_grad)


def bce(probs, label):
    """`nn.BCELoss` against a constant label, computed in float32."""
    probs = probs.float()
    return F.binary_cross_entropy(probs, torch.full_like(probs, label))


def kl_loss(mu, logvar):
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()


def discriminator_loss(d, real, fake, mu):
    """The D loss terms (dict of 0-d tensors: total, real, wrong, fake[, uncond_real,
    uncond_fake]); `fake` is detached here and the condition is `mu` detached."""
    b = real.shape[0]
    if b < 2:
        raise ValueError(f"batch of {b}: the wrong pairs need at least 2 samples")
    cond = mu.detach()
    real_f, fake_f = d(real), d(fake.detach())
    t = {
        "real": bce(d.get_cond_logits(real_f, cond), 1.0),
        "wrong": bce(d.get_cond_logits(real_f[: b - 1], cond[1:]), 0.0),
        "fake": bce(d.get_cond_logits(fake_f, cond), 0.0),
    }
    if d.get_uncond_logits is None:
        t["total"] = t["real"] + (t["fake"] + t["wrong"]) * 0.5
    else:
        t["uncond_real"] = bce(d.get_uncond_logits(real_f), 1.0)
        t["uncond_fake"] = bce(d.get_uncond_logits(fake_f), 0.0)
        t["total"] = (t["real"] + t["uncond_real"]) / 2 + (
            t["fake"] + t["wrong"] + t["uncond_fake"]
        ) / 3
    return t


def generator_loss(d, fake, mu, logvar, kl_coeff=KL_COEFF):
    """The G loss terms (dict: total, adversarial, kl); gradients reach G through `fake` and,
    for the KL, through mu and logvar."""
    fake_f = d(fake)
    adversarial = bce(d.get_cond_logits(fake_f, mu.detach()), 1.0)
    if d.get_uncond_logits is not None:
        adversarial = adversarial + bce(d.get_uncond_logits(fake_f), 1.0)
    kl = kl_loss(mu, logvar)
    return {"total": adversarial + kl_coeff * kl, "adversarial": adversarial, "kl": kl}
