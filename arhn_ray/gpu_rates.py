"""What a token costs a GPU, derived from the GPU's and the model's published figures and two
stated efficiencies, so that ``plan`` and RESULTS.md price prefill and decode from the same
assumptions and say which. Pure arithmetic: nothing here ran on a GPU.

A Stage 1 or Stage 2 request costs, in GPU-seconds:

- each prompt token the prefix cache does not serve: ``2 x params`` FLOPs at ``fraction_of_peak``
  of the GPU's dense peak;
- each output token: the same FLOPs (chunked prefill runs decode tokens in the same compute-bound
  steps), plus reading its sequence's KV cache (``context x kv_bytes_per_token``) at
  ``fraction_of_bandwidth`` of the GPU's HBM bandwidth;
- every token: its share of reading the weights once a step, a step being ``step_tokens`` tokens
  (vLLM's ``max_num_batched_tokens``).

Checked against a published vLLM measurement (``PUBLISHED``): GPUStack's performance lab served
Qwen3-32B on one A100 SXM 80GB at 2,521 total tokens/s on ~2,000-prompt / ~100-output requests.

Example:
    >>> r = Rates()
    >>> round(r.check()[0])  # modelled total tokens/s on GPUStack's medium requests (2,521 measured)
    2490
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# (prompt tokens, output tokens, total tokens/s measured, where): one A100 SXM 80GB, Qwen3-32B bf16, vLLM
PUBLISHED = (2000, 100, 2521.0, "GPUStack's lab (vLLM, Qwen3-32B, one A100 SXM 80GB, ~2,000+100 tokens)")


@dataclass(frozen=True)
class Rates:
    """The GPU (A100-80GB SXM), the model (Qwen3-32B, bf16) and the two efficiencies that are assumed."""

    gpu: str = "A100-80GB SXM"
    peak_tflops: float = 312.0  # dense bf16, NVIDIA's data sheet
    hbm_tb_s: float = 2.039  # HBM2e bandwidth, NVIDIA's data sheet
    model: str = "Qwen3-32B"
    params_b: float = 32.8  # parameters, billions (Qwen3's model card)
    weight_bytes_per_param: float = 2.0  # bf16
    kv_bytes_per_token: int = 262_144  # 64 layers x 8 KV heads x 128 dims x (K + V) x 2 bytes
    # assumed: a chunked-prefill step reaches 0.55 of peak and 0.85 of the bandwidth. With these the
    # model gives 2,490 tokens/s on GPUStack's medium requests (2,521 measured, -1.2%); at 0.61 of peak
    # and the full bandwidth (the earlier prefill rate) it gives 2,769 there, 10% optimistic
    fraction_of_peak: float = 0.55
    fraction_of_bandwidth: float = 0.85
    step_tokens: int = 8192  # tokens a step (engine.max_num_batched_tokens): the weights are read once a step

    def flop_s(self) -> float:
        """GPU-seconds of compute a token (2 x params FLOPs) at the assumed fraction of peak."""
        return 2 * self.params_b * 1e9 / (self.peak_tflops * 1e12 * self.fraction_of_peak)

    def weights_s(self) -> float:
        """GPU-seconds a token of reading the weights, once a step of ``step_tokens``."""
        return (
            self.params_b
            * 1e9
            * self.weight_bytes_per_param
            / (self.hbm_tb_s * 1e12 * self.fraction_of_bandwidth)
            / self.step_tokens
        )

    def kv_s(self, context: float) -> float:
        """GPU-seconds an output token spends reading its sequence's KV cache of ``context`` tokens."""
        return context * self.kv_bytes_per_token / (self.hbm_tb_s * 1e12 * self.fraction_of_bandwidth)

    def prefill_tokens_per_gpu_s(self) -> float:
        return 1.0 / (self.flop_s() + self.weights_s())

    def decode_tokens_per_gpu_s(self, context: float) -> float:
        return 1.0 / (self.flop_s() + self.weights_s() + self.kv_s(context))

    def gpu_s(self, prefilled: float, output: float, context: float) -> float:
        """GPU-seconds of ``prefilled`` prompt tokens and ``output`` tokens whose mean context is ``context``."""
        return prefilled / self.prefill_tokens_per_gpu_s() + output / self.decode_tokens_per_gpu_s(context)

    def floor_s(self, tokens: float) -> float:
        """The compute floor: every token's FLOPs at 100% of peak, no memory traffic."""
        return tokens * 2 * self.params_b * 1e9 / (self.peak_tflops * 1e12)

    def check(self) -> tuple[float, float, str]:
        """(modelled, measured total tokens/s, source) on the published request shape."""
        prompt, output, measured, source = PUBLISHED
        modelled = (prompt + output) / self.gpu_s(prompt, output, prompt + output / 2)
        return modelled, measured, source

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
