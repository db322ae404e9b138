"""Model families (one file each), the shared partial-forward driver, loading and chat templates."""
