"""Few-shot heads, one per file; importing registers each in HEAD_REGISTRY."""
from models.heads import clipfsar, cross_transformer, hyrsm, mcdp, otam, trx, tsn  # noqa: F401
