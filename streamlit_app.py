"""Captioning Studio: caption photos, compare decoding, inspect evaluation, browse Flickr8k.

Run with ``streamlit run streamlit_app.py`` (or ``make app``).
"""
from collections import Counter
from pathlib import Path

import streamlit as st

import captioning  # noqa: F401  (quiet TensorFlow logs before anything loads it)
from ui.labels import literal
from ui.shell import app_pages
from ui.state import (
    artifacts_shown,
    bundle_gone_notice,
    bundle_manifest,
    bundle_paths,
    remember_bundle,
    warm_in_background,
)

warm_in_background()      # once per process: the default model loads while the visitor looks around
st.set_page_config(page_title="Captioning Studio", page_icon=":material/photo_camera:", layout="wide")

bundles = bundle_paths()
gone = bundle_gone_notice(bundles)
with st.sidebar:
    st.markdown("## :material/photo_camera: Captioning Studio")
    if bundles:
        labels = {str(p): p.name for p in bundles}
        root = artifacts_shown()
        st.selectbox("Model bundle", list(labels), format_func=labels.get, key="bundle_path",
                     help=f"Every bundle under {root}/ (train more with python train.py --out {root}/NAME)")
        remember_bundle()
        path = bundles[[str(p) for p in bundles].index(st.session_state["bundle_path"])]
        manifest = bundle_manifest(str(path), (path / "manifest.json").stat().st_mtime)
        if manifest is not None:
            decoders = manifest.decoders
            if len(decoders) == 1:
                lstm = f"**{decoders[0].kind}** LSTM ({decoders[0].units or '?'} units)"
            else:
                kinds = Counter(d.kind for d in decoders)
                lstm = f"ensemble of {len(decoders)} LSTMs (" + " + ".join(f"{n} **{k}**" for k,
                                                                           n in kinds.items()) + ")"
            encoders = " + ".join(f"**{e.label}**" + (f" ({e.input_size}px)" if e.input_size else "")
                                  for e in manifest.encoders)
            st.caption(f"{encoders} → {lstm} · {manifest.vocab_size:,} words · "
                       f"trained on {manifest.train_images or 0:,} images"
                       + (" · fine-tuned on CIDEr-D (self-critical)" if manifest.fine_tuned else ""))
        else:
            st.error(f"{path.name}: unreadable manifest. Rebuild with python train.py --out {path}")
    else:
        st.session_state["bundle_path"] = None
        st.info(f"No model bundle yet: `python train.py --out {artifacts_shown()}/default`")
if gone:        # said where the page is read, not only in the sidebar: what follows is another model's work
    now = st.session_state.get("bundle_path")
    st.warning(f"The bundle **{literal(gone)}** you were using is no longer there (deleted or moved)"
               + (f", so the app switched to **{literal(Path(now).name)}**: captions below come from it."
                  if now else "."), icon=":material/swap_horiz:")

st.navigation(app_pages()).run()
