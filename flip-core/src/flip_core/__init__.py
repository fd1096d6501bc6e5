"""FLIP shared core: the one wire contract both hub and trust import."""
