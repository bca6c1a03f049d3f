"""The replication: every claim re-measured on data the main design never saw.

The tiny track gets a second world (another seed: other people, other exposures, its own pretrained
model); SmolLM2 a second pool/test split (Study B) and other fictional people, events and personas
(Study A), through the studies' ``data_seed``; the theory model new seeds (new worlds). The design
is otherwise the main one, so a verdict that changes says how much the first one rested on its data.

Usage: ``rep = build(ReplicationConfig, stage_params(profile, "replication"), "replication")``;
``w2 = replication.tiny_world(world_cfg, real_cfg, rep, profile)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from knowinject.core.config import require

from knowinject.data import worldfiles


@dataclass(frozen=True)
class ReplicationConfig:
    world_seed: int = 1                   # the tiny track's second world
    data_seed: int = 1                    # SmolLM2's second split (Study B) and second draw of subjects (Study A)
    theory_seeds: tuple[int, ...] = ()    # the theory model's replication seeds (new worlds)

    def __post_init__(self):
        require(self.world_seed >= 0 and self.data_seed >= 0, "ReplicationConfig seeds must be >= 0")


def tiny_world(world_cfg, real_cfg, rep: ReplicationConfig, profile: str):
    """The replication's world for the tiny track (cached like every world)."""
    require(rep.world_seed != world_cfg.seed, f"replication.world_seed ({rep.world_seed}) must differ from the "
            f"world's seed ({world_cfg.seed})")
    return worldfiles.build(replace(world_cfg, seed=rep.world_seed), real_cfg, profile)
