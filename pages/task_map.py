"""Task map: UMAP or PCA of the signatures; a selection shows nearest neighbours in the full space."""
from __future__ import annotations

import streamlit as st

from fishersketch_core import views as V
from pages._ui import page_params, bind, plotly, require_tasks, show_error, space_select, sync, workspace

st.title("Task map")
page_params("family", "method", "colour", "seed", "nn", "selected")
st.caption("A 2-D picture of the signatures (rows L2-normalised: cosine geometry). Distances on the map are only "
           "a picture: neighbours of a selection are computed in the full signature space by ρ (U form), as in "
           "the ranking.")


@st.cache_resource(show_spinner=False)
def _maps() -> dict:
    """Process-wide cache of computed coordinates: {(version, space, family, method, params): MapResult}."""
    return {}


ws = workspace()
if not require_tasks(ws):
    st.stop()
space = space_select(ws)
meta = ws.tasks_in(space)
n = len(meta)
colour_opts = ["group", "model_id", "store", "task_type"] + [f"tag:{k}" for k in V.tag_columns(meta)]

bind("map_family", "family", "joint", lambda v: V.parse_choice(v, list(V.FAMILIES), "joint"))
bind("map_method", "method", "umap", lambda v: V.parse_choice(v, ["umap", "pca"], "umap"))
bind("map_colour", "colour", "group", lambda v: V.parse_choice(v, colour_opts, "group"), options=colour_opts)
bind("map_seed", "seed", 0, lambda v: V.parse_int(v, 0, 0, 10_000))
bind("map_nn", "nn", 15, lambda v: V.parse_int(v, 15, 2, 200))
c1, c2, c3 = st.columns(3)
family = c1.radio("Signature", list(V.FAMILIES), key="map_family", format_func=lambda f: V.FAMILY_LABELS[f])
method = c2.radio("Method", ["umap", "pca"], key="map_method", format_func=str.upper, horizontal=True)
colour = c3.selectbox("Colour by", colour_opts, key="map_colour")
c4, c5, c6 = st.columns(3)
seed = c4.number_input("Seed", min_value=0, max_value=10_000, step=1, key="map_seed", disabled=method == "pca")
nn = c5.number_input("UMAP n_neighbors", min_value=2, max_value=200, step=1, key="map_nn", disabled=method == "pca")
min_dist = c6.slider("UMAP min_dist", 0.0, 0.99, 0.1, 0.01, key="map_min_dist", disabled=method == "pca")
for key, qp, default in (("map_family", "family", "joint"), ("map_method", "method", "umap"),
                         ("map_colour", "colour", "group"), ("map_seed", "seed", 0), ("map_nn", "nn", 15)):
    sync(key, qp, st.session_state[key], default)

if n < 2:
    st.info(f"This signature space has {n} task; a map needs at least 2 (UMAP at least 3). Compute or import more "
            "on the Signatures page.")
    st.stop()
if n < 4:
    st.warning(f"Only {n} tasks: the map is shown, but with so few points its layout says little. "
               + ("UMAP needs at least 3 tasks, so PCA is used." if n < 3 and method == "umap" else ""))

params = (int(seed), int(nn), float(min_dist)) if method == "umap" else ()
key = (ws.cache_key, space, family, method, params)
cache = _maps()
run = st.button("Run", type="primary", key="map_run",
                help="UMAP's first run in a process compiles for several seconds; results are cached.")
if key not in cache and (run or method == "pca"):
    with st.spinner(f"Computing the {method.upper()} map of {n} tasks…"):
        try:
            _, x = ws.matrix(space, family)
            cache[key] = V.task_map(x, method=method, seed=int(seed), n_neighbors=int(nn), min_dist=float(min_dist))
        except Exception as exc:
            show_error(exc, "The map failed")
            st.stop()
res = cache.get(key)
if res is None:
    st.info("Press **Run** to compute the UMAP map for these settings (PCA is computed at once).")
    st.stop()
note = f"{res.method.upper()} in {res.seconds:.2f} s (cached)." + (f" {res.note}" if res.note else "")
if res.method == "pca":
    ev = res.params.get("explained_variance", [])
    note += " Explained variance: " + ", ".join(f"{100 * v:.0f}%" for v in ev) + "."
st.caption(note)

event = plotly(V.fig_task_map(meta, res, colour, family), key="map_chart", on_select="rerun",
               selection_mode=("points", "box", "lasso"))
picked = []
try:
    picked = [p.get("text") for p in (event.selection.points or []) if p.get("text")]
except AttributeError:
    picked = []
labels = meta["label"].tolist()
if picked and picked != st.session_state.get("_map_last_pick"):
    st.session_state["map_selected"] = [p for p in picked if p in labels]
st.session_state["_map_last_pick"] = picked
bind("map_selected", "selected", [], lambda v: V.parse_list(v, labels), many=True, options=labels)
selected = st.multiselect("Selected tasks (click or lasso on the map, or pick here)", labels, key="map_selected")
sync("map_selected", "selected", selected, [])
k = st.slider("Neighbours per selected task", 1, max(1, min(20, n - 1)), min(5, max(1, n - 1)), key="map_k") \
    if n > 2 else 1
if selected:
    _, rho = ws.rho(space, family, "U")
    nb = V.nearest_neighbours(meta, rho, selected, k=int(k))
    st.subheader(f"Nearest neighbours in the full {family} signature space")
    st.dataframe(nb, hide_index=True, key="map_neighbours")
    st.download_button("Export the selection and its neighbours (CSV)", nb.to_csv(index=False).encode(),
                       file_name="selection-neighbours.csv", mime="text/csv", key="map_download")
