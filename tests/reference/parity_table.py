"""The GPU folder's side-by-side table: reads `results/step-*-ours.json` and
`results/step-*-torch.json` (one JSON line each, from `chatpainter bench-step` and
`step_torch.py`) and the `*.mem` peak-memory samples beside them, and prints per case: images/s
of both, our time relative to PyTorch's, model FLOP utilisation and peak GPU memory.

    python parity_table.py results/

FLOPs: the reference counts one whole step (forward + backward, `FlopCounterMode`); both sides
run the same networks (the parameter counts are checked), so the count holds for ours too.
Utilisation is against the GPU's dense peak for the precision: float32 runs use TF32 tensor
cores for convolutions, so their peak is TF32's; bf16 runs against bf16's. Peaks are looked up
from the device name (H100 / H200 SXM: 494 TFLOP/s TF32, 989 TFLOP/s bf16, dense).
"""

import glob
import json
import os
import sys

# Dense tensor-core peaks, TFLOP/s: (tf32, bf16).
PEAKS = {"H100": (494.0, 989.0), "H200": (494.0, 989.0)}


def read_json(path):
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def read_mem(path):
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def peak_tflops(device_name, precision):
    for key, (tf32, bf16) in PEAKS.items():
        if key in (device_name or ""):
            return bf16 if precision == "bf16" else tf32
    return None


def rows(results):
    out = []
    for torch_path in sorted(glob.glob(os.path.join(results, "step-*-torch.json"))):
        name = os.path.basename(torch_path)[: -len("-torch.json")]
        ours_path = os.path.join(results, f"{name}-ours.json")
        theirs, ours = read_json(torch_path), read_json(ours_path)
        row = {"case": name, "ours": ours, "torch": theirs}
        row["ours_mem"] = read_mem(os.path.join(results, f"{name}-ours.mem"))
        row["torch_mem"] = read_mem(os.path.join(results, f"{name}-torch.mem"))
        out.append(row)
    return out


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "—"


def table(results):
    lines = [
        f"{'case':<40} {'ours img/s':>11} {'torch img/s':>11} {'ours/torch time':>15} "
        f"{'ours MFU':>8} {'torch MFU':>9} {'ours MiB':>9} {'torch MiB':>9}  note"
    ]
    for r in rows(results):
        o, t = r["ours"] or {}, r["torch"] or {}
        note = []
        if not r["ours"]:
            note.append("ours failed")
        if not r["torch"]:
            note.append("PyTorch failed")
        if o and t and (o.get("params_g"), o.get("params_d")) != (t.get("params_g"), t.get("params_d")):
            note.append(f"PARAMETER COUNTS DIFFER: ours {o.get('params_g')}/{o.get('params_d')}, "
                        f"PyTorch {t.get('params_g')}/{t.get('params_d')}")  # fmt: skip
        ratio = o["median_ms"] / t["median_ms"] if o and t else None
        flops = t.get("flops_per_step")
        peak = peak_tflops(t.get("device_name"), t.get("precision"))

        def mfu(report):
            if not (report and flops and peak):
                return None
            return 100.0 * flops / (report["median_ms"] / 1e3) / (peak * 1e12)

        lines.append(
            f"{r['case']:<40} {fmt(o.get('images_per_s'), '11.1f')} {fmt(t.get('images_per_s'), '11.1f')} "
            f"{fmt(ratio, '14.2f')}x {fmt(mfu(o), '7.1f')}% {fmt(mfu(t), '8.1f')}% "
            f"{fmt(r['ours_mem'], '9.0f')} {fmt(r['torch_mem'], '9.0f')}  {'; '.join(note)}"
        )
    dev = next((r["torch"].get("device_name") for r in rows(results) if r["torch"]), None)
    lines.append(
        f"device: {dev or 'unknown'}; FLOPs counted by the reference (forward + backward); MFU "
        "against the dense TF32 (f32 runs) or bf16 peak; memory: nvidia-smi's peak used MiB "
        "while the run lasted (whole GPU)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: python parity_table.py RESULTS_DIR")
    print(table(sys.argv[1]))
