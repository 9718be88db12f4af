"""Generated from protos/api.proto by scripts/gen_protos.py: do not edit."""
