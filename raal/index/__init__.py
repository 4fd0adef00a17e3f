"""The faiss layer: every nearest-neighbour search, k-center pass and k-means of raal's strategies goes through here.

Inputs may be numpy arrays or memmaps of any floating dtype, read in bounded row chunks; searches run on a GPU when
faiss sees one. Private modules: `_search` (exact and IVF k-NN, k-center greedy, range search), `_kmeans` (flat
and two-level k-means), `_ann` (the approximate pool index), `_candidates` (SEALS' k-NN candidate pool, kept
incrementally on that index), `_hac` (average-linkage HAC of weighted centroids), `_composable` (k-center over the
parts of a pool spread over workers), `_project` (a fixed random projection, for k-center on large pools),
`_common` (chunks, BLAS threads, the device).
"""
from raal.index._ann import PoolIndex, recall_at_k
from raal.index._candidates import KnnCandidates
from raal.index._common import CHUNK_BYTES, blas_threads, chunk_rows, gpu_count, iter_slices, mean_row, read_rows
from raal.index._composable import APPROX_FACTOR, composable_kcenter, kcenter_radius, merge_round, part_round
from raal.index._hac import average_linkage, cut_tree
from raal.index._kmeans import kmeans, kmeans_labels, kmeanspp_seeds, split_budget, two_level_kmeans, use_two_level
from raal.index._project import projected_width, projection_matrix, random_projection
from raal.index._search import METRICS, ivf_index, kcenter_greedy, knn, min_sq_dist_to, range_search

__all__ = ["APPROX_FACTOR", "CHUNK_BYTES", "METRICS", "KnnCandidates", "PoolIndex", "average_linkage", "blas_threads",
           "chunk_rows", "composable_kcenter", "cut_tree", "gpu_count", "iter_slices", "ivf_index", "kcenter_greedy",
           "kcenter_radius", "kmeans", "kmeans_labels", "kmeanspp_seeds", "knn", "mean_row", "merge_round",
           "min_sq_dist_to", "part_round", "projected_width", "projection_matrix", "random_projection", "range_search", "read_rows",
           "recall_at_k", "split_budget", "two_level_kmeans", "use_two_level"]
