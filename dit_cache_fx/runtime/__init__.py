"""The cache's runtime: state declared once (`layout`), the per-call step context (`step`), the per-region
decision (`policy`, `diff`, `taylor`) called from compiled graphs, and the host-side store (`store`)."""
