"""Command-line spellings that users of Lightning-Hydra templates type, rewritten into Hydra's own."""

from __future__ import annotations

# Groups with a default option that a user may switch off. Hydra rejects `group=null` once the group has a
# default (`~group` is its spelling), but `logger=null` is what lightning-hydra-template users type.
SWITCHABLE_GROUPS = ("logger", "callbacks")


def null_group_overrides(args: list[str]) -> list[str]:
    """Rewrite `logger=null` / `callbacks=null` into Hydra's deletion syntax `~logger` / `~callbacks`."""
    nulls = {f"{group}=null" for group in SWITCHABLE_GROUPS}
    return [f"~{arg.split('=')[0]}" if arg in nulls else arg for arg in args]
