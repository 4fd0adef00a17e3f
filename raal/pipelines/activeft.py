"""ActiveFT(pre): the whole budget chosen in one shot on the pre-trained features, then the final model.

One round: `al.initial + sum(schedule)` items picked by the `activeft` strategy (or whichever embedding-based
strategy the arm names) on the v0 features; the round is evaluated like SVPp (a proxy on the features), and
`eval.final` trains the final model by FT.
"""
from __future__ import annotations

from raal.pipelines.svpp import SVPpPipeline


class ActiveFTPipeline(SVPpPipeline):
    name = "activeft"
    single_shot = True
    supplies = frozenset({"embeddings"})
    about = "one shot on the pre-trained features, before any model exists"

    def sizes(self) -> list[int]:
        return [sum(self.ctx.sizes())]

    def random_only(self, r: int) -> bool:
        return self.arm.strategy == "random"
