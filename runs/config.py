"""The project's config schema, assembled explicitly: ONE ordered list of every component's `add_<x>_config`.

Each hook is declared beside the code that reads its keys; this list, at the top of the stack, decides which
components exist and in which order their sections are built. A new component adds its hook here.
`get_cfg`, `load_config` and `config_from_yaml_text` are what entry points and tests use.
"""
from __future__ import annotations

from typing import Iterable

from datasets.build import add_data_config
from datasets.frame_cache import add_frame_cache_config
from datasets.on_disk import add_on_disk_config
from datasets.synthetic import add_synthetic_config
from datasets.video import add_video_config
from models.amcap.amcap import add_amcap_config
from models.build import add_model_build_config
from models.clip import add_clip_backbone_config
from models.heads.cross_transformer import add_cross_transformer_config
from models.heads.hyrsm import add_hyrsm_config
from models.heads.mcdp import add_mcdp_config
from models.heads.otam import add_otam_config
from models.heads.parts_from_config import add_parts_config
from models.heads.trx import add_trx_config
from models.heads.tsn import add_tsn_config
from models.vfam import add_vfam_config
from runs.pretrain_clip import add_pretrain_config
from runs.test_net_few_shot import add_test_config
from runs.train_net_few_shot import add_train_config
from utils.config import CfgNode, ConfigError, build_defaults, config_from_text, merge_config
from utils.solver import add_solver_config

CONFIG_HOOKS = (
    add_data_config,  # DATA (and the episode shape TRAIN.WAY/SHOT/QUERY_PER_CLASS, VFAM.MAX_ENTITIES)
    add_video_config,  # DATA.DECODER
    add_frame_cache_config,  # DATA.FRAME_CACHE_MB
    add_on_disk_config,  # DATA.ON_MISSING_VIDEO
    add_synthetic_config,  # SYNTHETIC
    add_model_build_config,  # VIDEO.HEAD.NAME
    add_amcap_config,  # AMCAP
    add_clip_backbone_config,  # VIDEO.HEAD backbone keys, TRAIN.GRAD_CHECKPOINT
    add_vfam_config,  # VFAM
    add_parts_config,  # VIDEO.HEAD head-part keys, TRAIN text/OTAM keys (the prototype heads' parts)
    add_mcdp_config,  # MCDP
    add_otam_config,  # OTAM (CNN_OTAM)
    add_trx_config,  # TRX (CNN_TRX)
    add_hyrsm_config,  # HYRSM (CNN_HyRSM_1shot / _5shot), TRAIN.NUM_CLASS
    add_tsn_config,  # TSN (CNN_TSN)
    add_cross_transformer_config,  # CROSS_TRANSFORMER (CNN_CrossTransformer)
    add_test_config,  # TEST, TRAIN.NUM_TEST_TASKS/NUM_VAL_TASKS
    add_solver_config,  # SOLVER
    add_train_config,  # TRAIN loop keys
    add_pretrain_config,  # PRETRAIN (contrastive pretraining of the tiny CLIP on the synthetic world)
)


def get_cfg() -> CfgNode:
    """The full default config (unfrozen)."""
    return build_defaults(CONFIG_HOOKS)


# Keys only CLIP-FSAR's own configs carry (every one of its leaf configs sets TASK_TYPE; its base chain the rest).
CLIPFSAR_ONLY_KEYS = ("TASK_TYPE", "PRETRAIN.ENABLE", "TRAIN.META_BATCH", "TRAIN.DATASET_FEW")


def load_config(path: str | None = None, opts: Iterable[str] = (), freeze: bool = True) -> CfgNode:
    """Defaults <- YAML file (with bases) <- command-line KEY VALUE pairs; frozen unless asked otherwise."""
    try:
        return merge_config(get_cfg(), path, opts, freeze)
    except ConfigError as e:
        if path and any(key in CLIPFSAR_ONLY_KEYS for key in getattr(e, "unknown_keys", ())):
            raise ConfigError(f"{e} (this is a CLIP-FSAR config: convert it with python "
                              f"runs/convert_clipfsar_config.py {path} --out <ours.yaml>; docs/lineage.md, Coming from "
                              f"CLIP-FSAR)") from None
        raise


def config_from_yaml_text(text: str) -> CfgNode:
    """A frozen config from `cfg.dump()` text (the copy stored in a checkpoint or results.json)."""
    return config_from_text(get_cfg(), text)
