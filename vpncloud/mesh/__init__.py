"""The mesh orchestrator: one declarative ``mesh.yaml`` -> keys, per-node configs, plan and apply.

Public entry points live in the submodules named after the concept: ``models`` (the description),
``loader`` (YAML with file/line/field errors; ``vpncloud.sourcefile`` holds what the lab's loader shares),
``keystore`` (per-node Ed25519 seeds), ``render`` (the original 2.4 config files), ``plan`` (diff
against ``state``), ``apply`` (targets) and ``cli``.
"""
