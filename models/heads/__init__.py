"""Few-shot heads, one per file; importing registers each in HEAD_REGISTRY."""
from models.heads import clipfsar, hyrsm, mcdp, otam, trx  # noqa: F401
