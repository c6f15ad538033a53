"""Writes the texts that `chatpainter bench embed` encodes, as JSON arrays of strings, so that
`minilm_transformers.py` times the very same texts: VisDial-like short turns
("<question>? <answer>, <colour> <subject>") and whole 10-turn dialogues (~85 word pieces),
generated from the same seeded SplitMix64 stream, in the same order, as
crates/chatpainter-embed/src/bench.rs (`minilm_rows`: seed 11, the short turns first, then the
dialogues; our benchmark's defaults are 512 short turns and 96 dialogues, so `--dialogues 64`
gives its first 64).

    python tests/reference/bench_texts.py --short 512 --dialogues 64 --out-dir /tmp/texts
    # -> /tmp/texts/short.json, /tmp/texts/dialogues.json
"""

import argparse
import json
import os

MASK64 = (1 << 64) - 1

SUBJECTS = ["man", "woman", "dog", "cat", "bus", "train", "kite", "pizza", "giraffe", "bench",
            "boy", "surfer"]  # fmt: skip
COLOURS = ["red", "white", "black", "green", "blue", "brown", "yellow", "grey"]
QUESTIONS = [
    "any animals",
    "is it daytime",
    "what color is the {}",
    "is the {} standing",
    "how many people are there",
    "is it sunny",
    "can you see the sky",
    "is the {} young or old",
    "are there any trees near the {}",
    "what is the {} doing",
    "is this photo in color",
    "is anyone holding something",
]
ANSWERS = [
    "yes",
    "no",
    "i think so",
    "it is white and brown",
    "2",
    "not that i can see",
    "yes, a few",
    "looks like it",
    "maybe in his twenties",
    "sitting on a bench",
]


class SplitMix:
    """SplitMix64, as chatpainter_artifacts::SplitMix."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        return self.next_u64() % max(n, 1)

    def pick(self, items):
        return items[self.below(len(items))]


def turn(rng, detail):
    subject = rng.pick(SUBJECTS)
    question = rng.pick(QUESTIONS).replace("{}", subject)
    answer = rng.pick(ANSWERS)
    # The draw happens even without detail, so the stream stays in step with ours.
    if rng.below(3) != 0 and detail:
        answer = f"{answer}, {rng.pick(COLOURS)} {rng.pick(SUBJECTS)}"
    return question, answer


def turn_text(question, answer):
    question, answer = " ".join(question.split()), " ".join(answer.split())
    if question and not question.endswith("?"):
        question += "?"
    return " ".join(p for p in (question, answer) if p)


def dialogue_text(turns):
    return " ".join(t for t in (turn_text(q, a) for q, a in turns) if t)


def generate(short, dialogues):
    rng = SplitMix(11)
    short_texts = [turn_text(*turn(rng, True)) for _ in range(short)]
    dialogue_texts = [
        dialogue_text([turn(rng, False) for _ in range(10)]) for _ in range(dialogues)
    ]
    return short_texts, dialogue_texts


def write_json_atomic(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", type=int, default=512)
    ap.add_argument("--dialogues", type=int, default=96)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    if a.short < 0 or a.dialogues < 0:
        ap.error("--short and --dialogues must not be negative")
    short, dialogues = generate(a.short, a.dialogues)
    os.makedirs(a.out_dir, exist_ok=True)
    write_json_atomic(os.path.join(a.out_dir, "short.json"), short)
    write_json_atomic(os.path.join(a.out_dir, "dialogues.json"), dialogues)
    print(f"wrote {len(short)} short turns and {len(dialogues)} dialogues to {a.out_dir}")


if __name__ == "__main__":
    main()
