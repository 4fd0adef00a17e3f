"""Training: the fine-tune jobs (FT, LP-FT, LoRA) on the run's warm actor or Ray Train, and the MLP proxy.

Private modules: `_driver` (the driver side of a job: inputs, resources, the path it takes, checkpoints),
`_warm` (the warm training actor), `_loop` (the epoch loop both paths run), `_parts` (the classifier, its stages,
augmentation, rank order) and `_proxy` (the proxy of SVPp/ASVP on pre-computed features).
"""
from raal.train._driver import (
    CPU_SHARE,
    CRASH_ENV,
    METHODS,
    TrainResult,
    check_train_images,
    choose_path,
    finetune,
    finetune_lora,
    rescue_damaged_run,
    worker_resources,
)
from raal.train._parts import STATE_FILE, Classifier, random_resized_crop_flip, rank_order, state_digest
from raal.train._proxy import (
    PREDICT_OUTPUTS,
    ProxyMLP,
    TrainHistory,
    load_proxy,
    num_parameters,
    predict,
    proxy_state_dict,
    resolve_device,
    train_proxy,
)

__all__ = ["CPU_SHARE", "CRASH_ENV", "METHODS", "PREDICT_OUTPUTS", "STATE_FILE", "Classifier", "ProxyMLP",
           "TrainHistory", "TrainResult", "check_train_images", "choose_path", "finetune", "finetune_lora",
           "load_proxy", "num_parameters", "predict", "proxy_state_dict", "rank_order", "random_resized_crop_flip",
           "rescue_damaged_run", "resolve_device", "state_digest", "train_proxy", "worker_resources"]
