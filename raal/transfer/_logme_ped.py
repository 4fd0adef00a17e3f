"""LogME-PED: LogME of the PED-moved features, computed from the unmoved features' Gram matrix and class sums
(G + T^T S + S^T T + S^T diag(n) S and T + diag(n) S), so the moved features are never materialised."""
from __future__ import annotations

from raal.transfer._logme import LogMEResult, _check_variant, _logme_core, _require_two_classes
from raal.transfer._passes import _as_features, _encode_labels
from raal.transfer._ped import _ped_shift


def logme_ped(features, labels, reference=None, variant: str = "fast", **ped_params) -> tuple[float, int]:
    """LogME of the PED-moved features and the PED step count: (score, steps) (§2.3 final line).

    Equal to `logme(ped(features, labels, reference, **ped_params)[0], labels, variant)` without materialising
    the moved features: one pass for class sums and the Gram matrix, one for the class scatter. One class only
    -> ValueError (see `logme`); other degenerate inputs behave as in `ped` and `logme`. `logme_ped_details`
    returns the whole `LogMEResult` (per-class iterations and the cap flags) instead of the score.
    """
    result, steps = logme_ped_details(features, labels, reference, variant, **ped_params)
    return result.score, steps


def logme_ped_details(features, labels, reference=None, variant: str = "fast",
                      **ped_params) -> tuple[LogMEResult, int]:
    """`logme_ped` with the `LogMEResult` of the moved features (convergence: `.iterations`, `.capped`)."""
    _check_variant(variant)
    unknown = set(ped_params) - {"dt", "nsigma", "exit_ratio", "max_steps"}
    if unknown:
        raise ValueError(f"unknown PED parameters: {sorted(unknown)}")
    params = {"dt": 0.1, "nsigma": 0.6, "exit_ratio": 0.5, "max_steps": 6, **ped_params}
    X = _as_features(features)
    codes, classes, counts = _encode_labels(labels, X.shape[0])
    _require_two_classes(classes)
    n, d = X.shape
    shift, steps, sums = _ped_shift(X, codes, counts, reference, gram=n > d, **params)
    result = _logme_core(X, codes, classes, counts, variant, sums=sums if n > d else None, shift=shift)
    return result, steps
