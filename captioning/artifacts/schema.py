"""The schema checks of a parsed manifest.json (:func:`manifest_problem`): what
:func:`~captioning.artifacts.manifest.read_manifest` refuses before any field is trusted (file names inside the
bundle, checksums, encoder blocks).
"""
from __future__ import annotations

import re

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a parsed manifest's schema (None when nothing is)."""
    problem = _encoder_problem(manifest["encoder"], "encoder")
    if problem:
        return problem
    if not isinstance(manifest["decoder"], dict):
        return "has a malformed 'decoder' (expected an object)"
    if not _is_int(manifest["vocab_size"]) or manifest["vocab_size"] < 5:
        return "has a malformed 'vocab_size' (expected a whole number above 4)"
    if "max_length" in manifest and not (_is_int(manifest["max_length"]) and 1 <= manifest["max_length"] <= 1000):
        return "has a malformed 'max_length' (expected a whole number from 1 to 1000)"
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        return "has a malformed 'files' (expected an object of file name -> SHA-256)"
    for name, digest in files.items():
        if not PLAIN_NAME.fullmatch(name) or name in ("manifest.json",):
            return (f"lists {name!r} in 'files': only plain file names inside the bundle folder are allowed "
                    f"(no folders, '..' or absolute paths)")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            return f"has a malformed checksum for {name} in 'files' (expected 64 hex digits)"
    for name in ("decoder.keras", "vocab.json"):
        if name not in files:
            return f"does not list {name} in 'files'"
    members = manifest.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, dict) and isinstance(m.get("file"), str)
                                                and PLAIN_NAME.fullmatch(m["file"]) for m in members):
        return "has a malformed 'members' list"
    for i, member in enumerate(members, 1):
        if "encoder" in member:
            problem = _encoder_problem(member["encoder"], f"members[{i}].encoder")
            if problem:
                return problem
    return None


def _encoder_problem(enc, where: str) -> str | None:
    """What is wrong with an encoder block (the bundle's, or an ensemble member's own), None when nothing is."""
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or not isinstance(enc.get("key", ""), str):
        return f"has a malformed '{where}' (expected an object with a 'name')"
    if enc.get("alpha") is not None and (isinstance(enc["alpha"], bool) or not isinstance(enc["alpha"], (int, float))):
        return f"has a malformed '{where}.alpha' (expected a number or null)"
    return None
