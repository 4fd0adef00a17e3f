"""PEAL: LoRA adapters on a frozen ViT's qkv projections, trained every round, so features move every round.

The same loop as standard AL, with the LoRA job (rank 16, alpha 16, Adam 1e-3, class-balanced sampler) instead of
full fine-tuning; the merged weights re-embed the pool each round, so `featdist` (k-center on L2-normalised
embeddings) and `entropy` see LoRA-updated features (docs/algorithms.md §9).
"""
from __future__ import annotations

from raal.pipelines.standard import StandardPipeline


class PEALPipeline(StandardPipeline):
    name = "peal"
    only_strategies = frozenset({"entropy", "featdist", "random"})  # the strategies PEAL is defined with

    def method(self) -> str:
        return "LoRA"
