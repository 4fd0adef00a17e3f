"""Features: the embedding passes of a run and the versioned store they write.

`embed_images` runs a backbone over an image set (Ray Data's actor pool, or the run's warm actors for in-memory
sets) into a `FeatureStore` version, made of checksummed, resumable shard sets. Private modules: `_store` (versions
and splits, row views), `_shards` (the shard sets), `_embed` (the pass), `_embedder` (the UDF both ways run),
`_pool` (the warm actors).
"""
from raal.features._embed import ActorPlan, embed_images, plan_actors, weights_fingerprint
from raal.features._pool import release as release_pool
from raal.features._shards import DTYPE, ShardAssembler, ShardedSet, default_cache_dir, ids_digest, sha256
from raal.features._store import SPLITS, ArraySet, FeatureSet, FeatureStore

__all__ = ["DTYPE", "SPLITS", "ActorPlan", "ArraySet", "FeatureSet", "FeatureStore", "ShardAssembler", "ShardedSet",
           "default_cache_dir", "embed_images", "ids_digest", "plan_actors", "release_pool", "sha256",
           "weights_fingerprint"]
