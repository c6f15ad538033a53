"""Encodes texts with Hugging Face `transformers` and all-MiniLM-L6-v2 the way sentence-transformers
does for this model, to time (and numerically check) our Burn encoder
(crates/chatpainter-model/src/text/minilm.rs) against it.

What sentence-transformers runs for this folder (read from `modules.json`,
`sentence_bert_config.json`, `1_Pooling/config.json`; checked at start): the BERT model
(`Transformer`: tokenise with truncation to `max_seq_length` word pieces, 256 for this model, pad to
the longest text of the batch), `Pooling` with mean over the attention mask (sum / max(count,
1e-9)), then `Normalize` (L2, eps 1e-12). Texts are stripped of surrounding whitespace.

Batching: `--sort-by-length` (the default) batches as our encoder does: tokenise every text, sort
by word-piece count, cut neighbours into batches of at most `--batch` texts and `--batch-tokens`
padded word pieces (texts x longest), so both sides pad alike. `--no-sort-by-length` batches as
sentence-transformers' `encode` does: sorted by character length, longest first, fixed batches of
`--batch` texts. Vectors come back in input order either way. Our encoder truncates at 128 word
pieces (`MiniLmConfig::max_tokens`), sentence-transformers at 256: `--max-length 128` matches ours;
it makes no difference below 128 word pieces. Our default batch is 64 texts (sentence-transformers'
is 32, this script's default).

    python tests/reference/minilm_transformers.py --texts /tmp/texts/short.json --threads 2 \
        --repeat 3 --dump /tmp/short.npy

One JSON line on stdout; each timed pass covers tokenisation, batching, the forward passes,
pooling and normalisation of all texts (as our `encode_batch`), after one untimed warm-up pass.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(REPO, "data", "models", "all-MiniLM-L6-v2")


class InputError(Exception):
    pass


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read {what}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: {what} is not valid JSON: {e}") from e


def sentence_transformers_setup(model_dir):
    """The max length, after checking the folder describes Transformer -> mean Pooling ->
    Normalize."""
    modules = read_json(os.path.join(model_dir, "modules.json"), "the module list")
    kinds = [m.get("type", "") if isinstance(m, dict) else "" for m in modules]
    want = [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    if kinds != want:
        raise InputError(f"{model_dir}/modules.json: modules {kinds}, this script runs {want}")
    pooling = read_json(os.path.join(model_dir, "1_Pooling", "config.json"), "the pooling config")
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
    on = sorted(k for k, v in modes.items() if v)
    if on != ["pooling_mode_mean_tokens"]:
        raise InputError(
            f"{model_dir}/1_Pooling/config.json: pooling modes {on}, this script implements "
            "only pooling_mode_mean_tokens"
        )
    st = read_json(os.path.join(model_dir, "sentence_bert_config.json"), "the model config")
    max_len = st.get("max_seq_length")
    if not isinstance(max_len, int) or max_len < 2:
        raise InputError(
            f"{model_dir}/sentence_bert_config.json: field max_seq_length is {max_len!r}, "
            "expected an integer >= 2"
        )
    if st.get("do_lower_case"):
        raise InputError(
            f"{model_dir}/sentence_bert_config.json: do_lower_case = true is not implemented"
        )
    return max_len


def read_texts(path):
    texts = read_json(path, "the texts")
    if not isinstance(texts, list) or not texts:
        raise InputError(f"{path}: expected a non-empty JSON array of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"{path}: record {i} is a {type(t).__name__}, expected a string")
        if not t.strip():
            raise InputError(f"{path}: record {i} is empty or whitespace only")
    return [t.strip() for t in texts]


def our_batches(lengths, batch, batch_tokens):
    """Index lists as our encoder cuts them: ascending word-piece count, at most `batch` texts
    and `batch_tokens` padded word pieces per batch (a single text may exceed the latter)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while (
            end < len(order)
            and end - start < batch
            and (end - start + 1) * lengths[order[end]] <= batch_tokens
        ):
            end += 1
        out.append(order[start:end])
        start = end
    return out


def st_batches(texts, batch):
    """sentence-transformers' `encode` order: longest text (characters) first, fixed batches."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[k : k + batch] for k in range(0, len(order), batch)]


def embed(model, ids, mask):
    hidden = model(
        input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)
    ).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(mean, p=2, dim=1)


def encode(model, tokenizer, texts, a, device):
    """One pass over every text; returns (vectors [N, 384] in input order, word pieces per text)."""
    out = [None] * len(texts)
    if a.sort_by_length:
        enc = tokenizer(texts, truncation=True, max_length=a.max_length, padding=False)
        ids_list = enc["input_ids"]
        lengths = [len(x) for x in ids_list]
        for rows in our_batches(lengths, a.batch, a.batch_tokens):
            seq = max(lengths[i] for i in rows)
            ids = torch.zeros(len(rows), seq, dtype=torch.long)
            mask = torch.zeros(len(rows), seq, dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : lengths[i]] = torch.tensor(ids_list[i])
                mask[r, : lengths[i]] = 1
            vecs = embed(model, ids.to(device), mask.to(device)).float().cpu()
            for r, i in enumerate(rows):
                out[i] = vecs[r]
    else:
        lengths = [0] * len(texts)
        for rows in st_batches(texts, a.batch):
            enc = tokenizer(
                [texts[i] for i in rows],
                truncation="longest_first",
                max_length=a.max_length,
                padding=True,
                return_tensors="pt",
            )
            mask = enc["attention_mask"]
            vecs = embed(model, enc["input_ids"].to(device), mask.to(device)).float().cpu()
            for r, i in enumerate(rows):
                out[i] = vecs[r]
                lengths[i] = int(mask[r].sum())
    return torch.stack(out), lengths


def save_npy_atomic(path, array):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", required=True, help="JSON array of strings")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="sentence-transformers folder")
    ap.add_argument("--batch", type=int, default=32, help="most texts per forward pass")
    ap.add_argument(
        "--batch-tokens", type=int, default=768,
        help="with --sort-by-length: most padded word pieces per pass (ours: 768)",
    )  # fmt: skip
    ap.add_argument(
        "--sort-by-length", action=argparse.BooleanOptionalAction, default=True,
        help="batch as our encoder (default); --no-sort-by-length: as sentence-transformers",
    )  # fmt: skip
    ap.add_argument("--max-length", type=int, default=None, help="default: max_seq_length")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes after one warm-up")
    ap.add_argument("--dump", default=None, help="write the vectors (float32 .npy)")
    a = ap.parse_args(argv)
    for key in ("batch", "batch_tokens", "repeat"):
        if getattr(a, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be at least 1")
    if a.threads is not None and a.threads < 1:
        ap.error("--threads must be at least 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is false on this machine")
    try:
        st_max = sentence_transformers_setup(a.model)
        texts = read_texts(a.texts)
    except InputError as e:
        sys.exit(f"minilm_transformers: {e}")
    if a.max_length is None:
        a.max_length = st_max
    if not 2 <= a.max_length <= 512:
        ap.error(f"--max-length {a.max_length}: must be between 2 and 512 (the model's positions)")
    if a.threads is not None:
        torch.set_num_threads(a.threads)

    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    device = torch.device(a.device)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModel.from_pretrained(a.model).to(device).eval()
    pass_ms = []
    with torch.inference_mode():
        vectors, lengths = encode(model, tokenizer, texts, a, device)  # warm-up
        for _ in range(a.repeat):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            vectors, lengths = encode(model, tokenizer, texts, a, device)
            pass_ms.append((time.perf_counter() - t0) * 1e3)
    if a.dump:
        save_npy_atomic(a.dump, vectors.numpy().astype(np.float32))
    out = {
        "impl": "transformers",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": a.device,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "batch_tokens": a.batch_tokens if a.sort_by_length else None,
        "sort_by_length": a.sort_by_length,
        "max_length": a.max_length,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "texts": len(texts),
        "mean_word_pieces": round(sum(lengths) / len(lengths), 2),
        "median_ms_per_text": round(statistics.median(pass_ms) / len(texts), 4),
        "pass_ms": [round(t, 2) for t in pass_ms],
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
