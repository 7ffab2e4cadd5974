"""CLI sub-command modules; each defines ``register(subparsers)``."""
