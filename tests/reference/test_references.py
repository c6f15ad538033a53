"""Tests of the PyTorch references (not part of `cargo xtask ci`: they need the venv of
tests/reference/README.md). Run from the repository root:

    ~/.cache/chatpainter-torch-venv/bin/python -m unittest discover -s tests/reference -v

The MiniLM test needs `data/models/all-MiniLM-L6-v2` and `transformers`, and says so when skipped.
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stackgan_torch as sg  # noqa: E402
import step_torch  # noqa: E402

# Our trainable-parameter counts (crates/chatpainter-nn, measured by its tests): preset ->
# (variant, Stage-I gf, Stage-I df, Stage-II gf, Stage-II df, r_num) and
# (CA, Stage-I G, Stage-I D, Stage-II G trainable, Stage-II G with Stage-I, Stage-II D, BiLSTM).
OUR_COUNTS = {
    "stackgan-pytorch-coco": (
        ("stackgan", 192, 96, 192, 96, 2),
        (262_400, 20_020_832, 12_407_425, 37_130_480, 57_151_312, 159_889_538, 0),
    ),
    "stackgan": (
        ("stackgan", 128, 64, 128, 64, 4),
        (262_400, 10_301_248, 5_715_713, 26_290_080, 36_591_328, 71_269_122, 0),
    ),
    "chatpainter-nonrecurrent": (
        ("chatpainter-nonrecurrent", 128, 64, 128, 64, 4),
        (1_491_200, 11_530_048, 5_715_713, 27_518_880, 39_048_928, 71_269_122, 0),
    ),
    "chatpainter-recurrent": (
        ("chatpainter-recurrent", 128, 64, 128, 64, 4),
        (786_688, 10_825_536, 5_715_713, 26_814_368, 37_639_904, 71_269_122, 47_726_592),
    ),
}


def small_stage1(variant, df=8):
    torch.manual_seed(0)
    return sg.build_stage1(variant, 16, 24, 8, 16, 100, 8, df)


def small_inputs(variant, b=4):
    caps = torch.randn(b, 16)
    dia, lens = None, None
    if variant == "chatpainter-nonrecurrent":
        dia = torch.randn(b, 24)
    elif variant == "chatpainter-recurrent":
        lens = torch.tensor([3, 1, 3, 2][:b])
        dia = torch.randn(b, 3, 24)
        for i, n in enumerate(lens):
            dia[i, n:] = 0
    return caps, dia, lens, torch.randn(b, 100)


class ParameterCounts(unittest.TestCase):
    def test_counts_match_ours_for_every_preset(self):
        for preset, ((variant, gf, df, gf2, df2, r), want) in OUR_COUNTS.items():
            with self.subTest(preset=preset), torch.device("meta"):
                s1, d1 = sg.build_stage1(variant, 1024, 4800, 1024, 128, 100, gf, df)
                rnn = 0 if s1.dialogue is None else sg.trainable(s1.dialogue)
                got = [sg.trainable(s1.g.ca_net), sg.trainable(s1.g), sg.trainable(d1)]
                s2, d2 = sg.build_stage2(s1, 128, gf2, df2, r)
                got += [sg.trainable(s2), sg.count(s2.g.parameters()), sg.trainable(d2), rnn]
                self.assertEqual(tuple(got), want)
                # Stage-II trains none of the Stage-I parts.
                self.assertEqual(sg.trainable(s2.g.STAGE1_G), 0)
                if s2.dialogue is not None:
                    self.assertEqual(sg.trainable(s2.dialogue), 0)

    def test_model_md_sub_counts(self):
        with torch.device("meta"):
            _, d1 = sg.build_stage1("stackgan", 1024, 0, 0, 128, 100, 192, 96)
        self.assertEqual(sg.trainable(d1.encode_img), 6_200_448)
        self.assertEqual(sg.trainable(d1.get_cond_logits), 6_206_977)
        with torch.device("meta"):
            s1, _ = sg.build_stage1("stackgan", 1024, 0, 0, 128, 100, 192, 96)
            _, d2 = sg.build_stage2(s1, 128, 192, 96, 2)
            reduced, _ = sg.build_stage1("stackgan", 1024, 0, 0, 128, 100, 32, 32)
        # "the fc alone is 5.60 M", "the 1536 -> 3072 4x4 conv alone is 75.5 M"
        self.assertEqual(s1.g.fc[0].weight.numel(), 5_603_328)
        self.assertEqual(d2.encode_img[14].weight.numel(), 75_497_472)
        # The reduced-width Stage-I G (gf 32) whose count is quoted for PyTorch in our notes.
        self.assertEqual(sg.trainable(reduced), 1_597_072)


class Names(unittest.TestCase):
    def test_state_dict_keys_are_the_reference_names(self):
        s1, _ = small_stage1("chatpainter-recurrent")
        s2, d2 = sg.build_stage2(s1, 16, 8, 4, 2)
        g_keys, d_keys = set(s2.g.state_dict()), set(d2.state_dict())
        for key in [
            "STAGE1_G.ca_net.fc.weight",
            "STAGE1_G.fc.0.weight",
            "STAGE1_G.fc.1.running_var",
            "STAGE1_G.upsample4.2.bias",
            "STAGE1_G.img.0.weight",
            "encoder.0.weight",
            "encoder.6.weight",
            "hr_joint.1.weight",
            "residual.1.block.4.weight",
            "upsample4.1.weight",
            "img.0.weight",
        ]:
            self.assertIn(key, g_keys)
        for key in [
            "encode_img.0.weight",
            "encode_img.21.running_mean",
            "get_cond_logits.outlogits.3.bias",
            "get_uncond_logits.outlogits.0.bias",
        ]:
            self.assertIn(key, d_keys)
        self.assertIn("lstm.weight_ih_l0_reverse", set(s2.dialogue.state_dict()))


class Init(unittest.TestCase):
    def test_initialisation_rules(self):
        torch.manual_seed(1)
        _, d = sg.build_stage1("stackgan", 16, 0, 0, 16, 100, 8, 32)
        g, _ = small_stage1("stackgan")
        w = d.encode_img[5].weight  # a 4x4 conv, 64 -> 128 channels
        self.assertAlmostEqual(w.std().item(), 0.02, delta=0.002)
        self.assertAlmostEqual(w.mean().item(), 0.0, delta=0.002)
        self.assertTrue(torch.all(g.g.ca_net.fc.bias == 0))
        bn = d.encode_img[6]
        self.assertIsInstance(bn, torch.nn.BatchNorm2d)
        self.assertTrue(torch.all(bn.bias == 0))
        self.assertAlmostEqual(bn.weight.mean().item(), 1.0, delta=0.01)
        # The logit conv's bias keeps PyTorch's default U(+-1/sqrt(fan_in)), as ours.
        bias = d.get_cond_logits.outlogits[3].bias
        bound = 1 / (8 * 32 * 16) ** 0.5
        self.assertNotEqual(bias.item(), 0.0)
        self.assertLessEqual(abs(bias.item()), bound)


class Forward(unittest.TestCase):
    def test_shapes_for_every_variant_and_stage(self):
        for variant in sg.VARIANTS:
            with self.subTest(variant=variant):
                s1, d1 = small_stage1(variant)
                caps, dia, lens, noise = small_inputs(variant)
                fake, mu, logvar = s1(caps, dia, lens, noise)
                self.assertEqual(tuple(fake.shape), (4, 3, 64, 64))
                self.assertEqual(tuple(mu.shape), (4, 16))
                self.assertTrue(torch.all(mu >= 0) and torch.all(logvar >= 0))
                self.assertEqual(tuple(d1(fake).shape), (4, 64, 4, 4))
                s2, d2 = sg.build_stage2(s1, 16, 8, 4, 1)
                fake2, _, _ = s2(caps, dia, lens, noise)
                self.assertEqual(tuple(fake2.shape), (4, 3, 256, 256))
                self.assertEqual(tuple(d2(fake2).shape), (4, 32, 4, 4))

    def test_given_eps_makes_the_forward_deterministic(self):
        s1, _ = small_stage1("stackgan")
        s1.eval()
        caps, _, _, noise = small_inputs("stackgan")
        eps = [torch.randn(4, 16)]
        a, _, _ = s1(caps, None, None, noise, eps)
        b, _, _ = s1(caps, None, None, noise, eps)
        c, _, _ = s1(caps, None, None, noise)
        self.assertTrue(torch.equal(a, b))
        self.assertFalse(torch.equal(a, c))

    def test_padding_turns_do_not_change_the_summary(self):
        torch.manual_seed(2)
        enc = sg.DialogueEncoder(6, 5)
        turns = torch.randn(2, 4, 6)
        lens = torch.tensor([4, 2])
        full = enc(turns, lens)
        alone = enc(turns[1:2, :2], torch.tensor([2]))
        self.assertTrue(torch.allclose(full[1], alone[0], atol=1e-6))
        poisoned = turns.clone()
        poisoned[1, 2:] = 1e3
        self.assertTrue(torch.allclose(enc(poisoned, lens), full, atol=1e-6))

    def test_stage1_batch_norm_modes_inside_stage2(self):
        for batch_stats in (True, False):
            with self.subTest(batch_stats=batch_stats):
                s1, _ = small_stage1("stackgan")
                s2, _ = sg.build_stage2(s1, 16, 8, 4, 1, stage1_bn_batch_stats=batch_stats)
                s2.train()
                bn = s2.g.STAGE1_G.fc[1]
                before = bn.running_mean.clone()
                caps, _, _, noise = small_inputs("stackgan")
                s2(caps, None, None, noise)
                self.assertEqual(not torch.equal(before, bn.running_mean), batch_stats)
                self.assertEqual(bn.training, batch_stats)
                self.assertTrue(s2.g.encoder[3].training)


class Losses(unittest.TestCase):
    def test_hand_values_as_ours(self):
        # The same figures as our loss tests (crates/chatpainter-nn/src/loss.rs).
        self.assertAlmostEqual(sg.bce(torch.tensor([0.9, 0.6]), 1.0).item(), 0.3080931, 6)
        self.assertAlmostEqual(sg.bce(torch.tensor([0.2, 0.7]), 0.0).item(), 0.7135581, 6)
        self.assertAlmostEqual(sg.bce(torch.tensor([0.0, 0.5]), 1.0).item(), 50.34657, 3)
        kl = sg.kl_loss(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]]))
        self.assertAlmostEqual(kl.item(), 0.2420705, 6)

    def test_d_loss_compositions(self):
        for stage in (1, 2):
            with self.subTest(stage=stage):
                s1, d = small_stage1("stackgan")
                if stage == 2:
                    s1, d = sg.build_stage2(s1, 16, 8, 4, 1)
                caps, _, _, noise = small_inputs("stackgan")
                fake, mu, logvar = s1(caps, None, None, noise)
                real = torch.rand_like(fake) * 2 - 1
                t = sg.discriminator_loss(d, real, fake, mu)
                if stage == 1:
                    want = t["real"] + (t["wrong"] + t["fake"]) / 2
                else:
                    want = (t["real"] + t["uncond_real"]) / 2 + (
                        t["fake"] + t["wrong"] + t["uncond_fake"]
                    ) / 3
                self.assertAlmostEqual(t["total"].item(), want.item(), 5)
                gl = sg.generator_loss(d, fake, mu, logvar)
                self.assertAlmostEqual(
                    gl["total"].item(), (gl["adversarial"] + 2 * gl["kl"]).item(), 5
                )
                with self.assertRaises(ValueError):
                    sg.discriminator_loss(d, real[:1], fake[:1], mu[:1])


class StepScript(unittest.TestCase):
    def run_step(self, *args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            step_torch.main(list(args))
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        return json.loads(lines[0])

    def test_one_json_line_with_counts_and_finite_losses(self):
        common = ["--batch", "4", "--gf", "4", "--caption-dim", "16", "--dialogue-dim", "12",
                  "--rnn-hidden", "4", "--turns", "3", "--cond-dim", "8", "--warmup", "1",
                  "--steps", "2", "--threads", "1"]  # fmt: skip
        r = self.run_step("--stage", "1", "--variant", "chatpainter-recurrent", "--df", "4", *common)
        self.assertTrue(r["finite"])
        self.assertEqual((r["impl"], r["stage"], r["steps"], len(r["step_ms"])), ("pytorch", 1, 2, 2))
        with torch.device("meta"):
            g, d = sg.build_stage1("chatpainter-recurrent", 16, 12, 4, 8, 100, 4, 4)
        self.assertEqual((r["params_g"], r["params_d"]), (sg.trainable(g), sg.trainable(d)))
        self.assertGreater(r["flops_per_step"], 0)
        r = self.run_step("--stage", "2", "--variant", "stackgan", "--s2-gf", "4", "--s2-df", "4",
                          "--r-num", "1", "--precision", "bf16", *common)  # fmt: skip
        self.assertTrue(r["finite"])
        self.assertEqual(r["widths"]["s2_gf_dim"], 4)
        self.assertGreater(r["params_detail"]["g_frozen"], 0)

    def test_bad_arguments_are_refused(self):
        for args in (["--batch", "1"], ["--gf", "3"], ["--s2-gf", "6"], ["--steps", "0"]):
            with self.subTest(args=args), contextlib.redirect_stderr(io.StringIO()):
                with self.assertRaises(SystemExit):
                    step_torch.parse_args(args)


class ParityTable(unittest.TestCase):
    def test_ratio_mfu_memory_and_count_mismatch(self):
        import parity_table

        def report(ms, params_g=10):
            return {"median_ms": ms, "images_per_s": 384 / (ms / 1e3), "params_g": params_g,
                    "params_d": 5, "flops_per_step": 4.94e12, "precision": "f32",
                    "device_name": "NVIDIA H200"}  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            for name, ours, theirs in (("step-a", report(200.0), report(100.0)),
                                       ("step-b", report(100.0, 11), report(100.0))):  # fmt: skip
                for side, r in (("ours", ours), ("torch", theirs)):
                    with open(os.path.join(tmp, f"{name}-{side}.json"), "w") as f:
                        f.write("log line\n" + json.dumps(r) + "\n")
                    with open(os.path.join(tmp, f"{name}-{side}.mem"), "w") as f:
                        f.write("1234\n")
            text = parity_table.table(tmp)
        a = next(l for l in text.splitlines() if l.startswith("step-a"))
        self.assertIn("2.00x", a)
        self.assertIn("5.0%", a)  # 4.94 TFLOP in 0.2 s against 494 TFLOP/s
        self.assertIn("10.0%", a)
        self.assertIn("1234", a)
        b = next(l for l in text.splitlines() if l.startswith("step-b"))
        self.assertIn("PARAMETER COUNTS DIFFER", b)


class MiniLm(unittest.TestCase):
    MODEL = os.path.join(os.path.dirname(os.path.dirname(HERE)), "data", "models",
                         "all-MiniLM-L6-v2")  # fmt: skip

    def test_both_batchings_agree_and_vectors_are_unit(self):
        try:
            import transformers  # noqa: F401
        except ImportError:
            self.skipTest("transformers is not installed in this Python")
        if not os.path.isfile(os.path.join(self.MODEL, "model.safetensors")):
            self.skipTest(f"{self.MODEL}/model.safetensors absent (cargo xtask setup minilm)")
        import minilm_transformers as mt

        short = [f"is the {s} {c}? yes, {c} {s}" for s in ("dog", "bus", "kite", "man")
                 for c in ("red", "blue", "green")]  # fmt: skip
        dialogues = [" ".join(f"any {s}? no, not {i}" for i in range(10))
                     for s in ("people", "animals", "cars")]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            texts = os.path.join(tmp, "t.json")
            with open(texts, "w") as f:
                json.dump(short + dialogues, f)
            vectors = []
            for flag in ("--sort-by-length", "--no-sort-by-length"):
                dump = os.path.join(tmp, f"{flag}.npy")
                with contextlib.redirect_stdout(io.StringIO()) as out:
                    mt.main(["--texts", texts, "--batch", "4", "--batch-tokens", "64",
                             "--repeat", "1", "--threads", "1", "--dump", dump, flag])  # fmt: skip
                r = json.loads(out.getvalue())
                self.assertEqual(r["texts"], 15)
                vectors.append(np.load(dump))
        self.assertEqual(vectors[0].shape, (15, 384))
        self.assertEqual(vectors[0].dtype, np.float32)
        np.testing.assert_allclose(np.linalg.norm(vectors[0], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)

    def test_bad_texts_name_the_record(self):
        import minilm_transformers as mt

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.json")
            with open(path, "w") as f:
                json.dump(["fine", 3], f)
            with self.assertRaisesRegex(mt.InputError, "record 1 is a int"):
                mt.read_texts(path)


if __name__ == "__main__":
    unittest.main()
