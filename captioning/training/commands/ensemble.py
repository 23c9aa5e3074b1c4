"""``train.py ensemble``: build an ensemble bundle from trained bundles (``PATH@1,3`` picks members).
"""
from __future__ import annotations

from pathlib import Path

from captioning.training.commands.scst import _scst_summary
from captioning.training.inputs import _load_bundle
from captioning.training.settings import (
    OptionError,
    Workspace,
)


# --- ensemble and SCST ------------------------------------------------------------------------------------
def build_ensemble(ws: Workspace, members: list[str] | None) -> Path:
    """One bundle whose decoding averages the next-word probabilities of every member bundle's decoders.

    Members may read different encoders (a cross-encoder ensemble): the first member's encoder is the bundle's,
    every decoder that reads another keeps that encoder's block in the manifest."""
    from captioning.artifacts.bundle import save_bundle, save_index
    from captioning.artifacts.manifest import encoder_key, manifest_entries
    from captioning.training.picks import check_pick, split_pick

    too_few = OptionError("ensemble needs {members} with at least two trained bundles, e.g. {members} "
                          "artifacts/default artifacts/xception-merge (or decoders of one: artifacts/default@1,3)")
    if not members:
        raise too_few
    bundles, picks = [], []
    for m in members:           # BUNDLE or BUNDLE@1,3 (some decoders of an ensemble bundle)
        try:
            path, indices = split_pick(m)
            bundle = _load_bundle(path, load_results=False)
            picks.append(check_pick(m, indices, len(bundle.decoders)))
        except ValueError as exc:
            raise OptionError(f"{{members}} {exc}") from None
        bundles.append(bundle)
    first = bundles[0]
    if picks[0][0] != 0:
        raise OptionError(f"{{members}} {members[0]}: the first member's first decoder must come first (the "
                          f"bundle takes its encoder and training record), e.g. {split_pick(members[0])[0]}@1,...")
    for path, b in zip(members[1:], bundles[1:]):
        if b.vocab.itos != first.vocab.itos:
            raise OptionError(f"{path} has another vocabulary than {members[0]}: retrain it with the same "
                              f"{{min_count}} on the same training split")
    if len(sum(picks, [])) < 2:
        raise too_few
    decoders = [b.decoders[i] for b, pick in zip(bundles, picks) for i in pick]
    encoders = [b.manifest.decoder_encoders[i] for b, pick in zip(bundles, picks) for i in pick]
    primary = encoder_key(first.encoder)
    member_encoders = [None if encoder_key(e) == primary else e for e in encoders[1:]]
    manifest = first.manifest.inherit("members")
    manifest.update(manifest_entries(
        max_length=max(b.max_length for b in bundles),
        ensemble_of=[_ensemble_parts(b)[i] for b, pick in zip(bundles, picks) for i in pick],
        command="python train.py ensemble --members " + " ".join(members) + f" --out {ws.bundle}"))
    datastore = _datastore(members, bundles, picks, primary)
    path = save_bundle(ws.out, decoders[0], first.vocab, manifest, members=decoders[1:],
                       member_encoders=member_encoders)
    if datastore is not None:           # a retrieval decoder reads its datastore: the bundle's index
        save_index(path, datastore)
    kinds = ", ".join(d.kind for d in decoders)
    keys = list(dict.fromkeys(encoder_key(e) for e in encoders))
    across = f" over {len(keys)} encoders ({', '.join(keys)})" if len(keys) > 1 else ""
    print(f"ensemble: {len(decoders)} decoders ({kinds}){across}; bundle {ws.bundle} (once evaluated)")
    return path


def _datastore(members: list[str], bundles: list, picks: list[list[int]], primary: str):
    """The datastore (retrieval index) of the member bundle whose picked decoder reads a memory, or None; it
    becomes the ensemble's index, so it must be of the ensemble's own encoder, and one memory serves all."""
    readers = [(path, b) for path, b, pick in zip(members, bundles, picks)
               if any(getattr(b.decoders[i], "uses_memory", False) for i in pick)]
    if not readers:
        return None
    path, bundle = readers[0]
    if any(b.index is None or b.index.names != bundle.index.names or b.index.captions != bundle.index.captions
           for _, b in readers):
        raise OptionError(f"{{members}} {', '.join(p for p, _ in readers)}: retrieval decoders with different "
                          f"datastores cannot share one ensemble; keep one of them")
    if bundle.index.encoder != primary:
        raise OptionError(f"{{members}} {path}: its retrieval decoder reads {bundle.index.encoder} features, the "
                          f"ensemble's first member {primary}; put a member of {bundle.index.encoder} first")
    return bundle.index


def _ensemble_parts(bundle) -> list[dict]:
    """Where each of a member bundle's decoders came from; a member that is itself an ensemble passes on its
    own parts (so an ensemble of ``default`` and a new decoder still names the bundles behind ``default``)."""
    keys = bundle.decoder_keys
    parts = bundle.manifest.ensemble_of
    if parts and len(parts) == len(keys):
        return [{**part, "encoder": key} for part, key in zip(parts, keys)]
    return [{"bundle": bundle.manifest.trained_as or bundle.name, "kind": d.kind, "encoder": key,
             "training": bundle.manifest.training_config,
             **({"scst": _scst_summary(bundle.manifest.scst)} if bundle.manifest.scst else {})}
            for d, key in zip(bundle.decoders, keys)]
