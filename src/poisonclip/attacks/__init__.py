"""Attacks: caption sets, triggers, targeted poisoning, backdoors, dedup evasion."""
