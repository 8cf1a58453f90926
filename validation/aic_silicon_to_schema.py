"""Convert AIConfigurator's silicon measurements (aggregated serving, one engine per row) into the
serving-calibration schema that `chipsim validate` reads.

Input: the rows of aic-core/src/aiconfigurator_core/systems/silicon_sample.csv (repository
xiaowanCN/aiconfigurator@5f2e6bb, a fork carrying AIConfigurator's database dump of 2026-04-27) on
H100 SXM, H200 SXM and B200 SXM in `agg` mode, transcribed to validation/published_crosscheck/aic_silicon_raw.csv
(id, the concurrency, measurement date and container image from its silicon_data_source, and the
configuration and result columns as they stand).

Output: validation/published_crosscheck/aic_silicon.csv, a TTFT and a TPOT row per measurement, for
the models chipsim's zoo has, on one engine instance (attention data parallelism 1) whose max batch
size is the benchmark's concurrency (the harness's rule; rows that differ are left out), but for the
measurements published/serving_calibration.csv already holds. The database holds some measurements more
than once (the same TTFT and TPOT to the last digit under several ids from successive dumps, some under
DeepSeek-V3's name as well as R1's): each is kept once. Rows whose TP exceeds a node's 8 GPUs are left out: in aggregated serving on one node they
are the database's product of the experts' TP and EP sizes (their measurements repeat those of a TP-8
row, or stand alone with no way to tell the real layout).

    python validation/aic_silicon_to_schema.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent / "published_crosscheck"
GPU = {"h100_sxm": "H100 SXM", "h200_sxm": "H200 SXM", "b200_sxm": "B200"}
# already in published/serving_calibration.csv (the same measurements): left out here
IN_CALIBRATION = {("h100_sxm", "trtllm", "meta-llama/Llama-3.1-8B-Instruct"), ("h200_sxm", "trtllm", "meta-llama/Llama-3.1-70B")}
GPUS_PER_NODE = 8  # HGX H100/H200 and DGX B200 nodes
MODELS = ("Llama-3.1-8B", "Llama-3.1-70B", "Qwen3-32B", "Qwen3-235B-A22B", "DeepSeek-R1", "DeepSeek-V3",
          "gpt-oss-120b")


def precision_of(row: pd.Series) -> tuple[str, str]:
    """(precision, quant_method) as the schema writes them."""
    gemm = str(row.gemm_quant_mode).lower() if isinstance(row.gemm_quant_mode, str) else ""
    if "gpt-oss" in row.model_path:  # MXFP4 experts whatever the database's label (nvfp4)
        return "MXFP4", "mxfp4 (experts; 16-bit attention)"
    if not gemm:
        return "BF16", "none"
    if gemm == "fp8_block":  # block-scaled FP8 checkpoints (Qwen's -FP8) carry no KV-cache scales
        return "FP8", "fp8 block-scaled, KV cache bf16"
    if gemm == "nvfp4":
        return "NVFP4", "nvfp4"
    if gemm == "fp8":
        return "FP8", "fp8"
    raise ValueError(f"{row.id}: unknown gemm_quant_mode {gemm!r}")


def main() -> None:
    raw = pd.read_csv(HERE / "aic_silicon_raw.csv")
    raw = raw[raw.tp_size <= GPUS_PER_NODE].drop_duplicates(
        ["system", "backend", "isl", "osl", "silicon_concurrency", "silicon_ttft_ms", "silicon_tpot_ms"])
    out = []
    for _, r in raw.iterrows():
        model = r.model_path.split("/")[-1]
        if not any(model.lower().startswith(m.lower()) for m in MODELS) or r.system not in GPU:
            continue
        if (r.system, r.backend, r.model_path) in IN_CALIBRATION:
            continue
        c = r.silicon_concurrency
        if isinstance(c, float) and math.isnan(c) or int(c) != int(r.batch_size):
            continue  # a max batch other than the concurrency (attention-DP replicas, tuned configs)
        if not math.isnan(r.attention_dp_size) and int(r.attention_dp_size) > 1:
            continue
        experts_over = math.prod(int(v) for v in (r.moe_tp_size, r.moe_ep_size) if not math.isnan(v) and v > 0)
        if experts_over > 1 and experts_over != int(r.tp_size):
            continue  # experts over more GPUs than the attention's TP: attention data parallelism
        precision, quant = precision_of(r)
        version = r.backend_version if isinstance(r.backend_version, str) else ""
        detail = (f"xiaowanCN/aiconfigurator@5f2e6bb aic-core/src/aiconfigurator_core/systems/silicon_sample.csv "
                  f"row id={r.id}" + "".join(f"; {k}={v}" for k, v in (("measured", r.measured), ("image", r.image))
                                             if isinstance(v, str)))
        base = {"source": "NVIDIA AIConfigurator silicon_sample.csv", "source_detail": detail,
                "engine": f"{r.backend} {version}".strip(), "model": model, "params_b": "",
                "gpu": GPU[r.system], "gpus": int(r.tp_size) * int(r.pp_size), "tp": int(r.tp_size),
                "pp": int(r.pp_size), "precision": precision, "quant_method": quant, "input_len": int(r.isl),
                "output_len": int(r.osl), "batch_or_concurrency": str(int(c)),
                "request_rate": "closed loop (concurrency)"}
        out.append({**base, "metric_name": "ttft", "metric_value": round(float(r.silicon_ttft_ms), 3), "unit": "ms",
                    "notes": "aggregated serving; aiperf closed loop, ignore_eos; TTFT includes queueing at this "
                             "concurrency"})
        out.append({**base, "metric_name": "tpot", "metric_value": round(float(r.silicon_tpot_ms), 4), "unit": "ms",
                    "notes": "aggregated serving; mean time per output token"})
    frame = pd.DataFrame(out)
    frame.to_csv(HERE / "aic_silicon.csv", index=False)
    print(f"{len(frame)} rows ({len(frame) // 2} measurements) -> {HERE / 'aic_silicon.csv'}")
    print(frame.groupby(["gpu", "engine", "model"]).size().to_string())


if __name__ == "__main__":
    main()
