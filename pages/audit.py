"""Bias audit: which sources and groups automated selection picks, across every target."""
from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from fishersketch_core import audit as A
from fishersketch_core import views as V
from pages._ui import page_params, bind, plotly, require_tasks, show_error, space_select, sync, workspace

st.title("Bias audit")
page_params("groups", "methods", "pool")
st.caption("Every task in turn is the target; each method picks its best-scoring source. Hubness: sources picked "
           "for many targets. Concentration: how unequal the picks are (Gini 0 = even). Disagreement: how often "
           "FisherSketch and activation-only selection pick different sources.")

ws = workspace()
if not require_tasks(ws, 3):
    st.stop()
space = space_select(ws)
meta = ws.tasks_in(space)
if len(meta) < 3:
    st.info("An audit needs at least 3 tasks in the signature space.")
    st.stop()
groups = sorted(meta["group"].unique())
methods_all = ["joint", "activation", "error", "kronecker"]

bind("audit_groups", "groups", [], lambda v: V.parse_list(v, groups), many=True, options=groups)
bind("audit_methods", "methods", methods_all, lambda v: V.parse_list(v, methods_all) or methods_all, many=True,
     options=methods_all)
bind("audit_pool", "pool", 0, lambda v: V.parse_int(v, 0, 0, 1000))
c1, c2 = st.columns([2, 2])
sel_groups = c1.multiselect("Target groups (empty = all)", groups, key="audit_groups")
methods = c2.multiselect("Methods", methods_all, key="audit_methods", format_func=lambda m: V.BY_LABELS[m])
c3, c4, c5 = st.columns([1, 1, 2])
pool = c3.number_input("Pool size (0 = every other task)", min_value=0, max_value=max(0, len(meta) - 1), step=1,
                       key="audit_pool", help="The protocol uses a fixed, seeded pool of 24 candidate sources.")
pool_seed = c4.number_input("Pool seed", min_value=0, value=0, step=1, key="audit_pool_seed")
gains_path = c5.text_input("Ground-truth gains file", value=str(V.default_gains_path()), key="audit_gains",
                           help="Parquet or CSV: long (source, target, gain) or a sources × targets matrix. "
                                f"Default data/results/gains.parquet or ${V.ENV_GAINS}.")
sync("audit_groups", "groups", sel_groups, [])
sync("audit_methods", "methods", methods, methods_all)
sync("audit_pool", "pool", int(pool), 0)
if not methods:
    st.info("Pick at least one method.")
    st.stop()

try:
    mats, grp = V.score_matrices(ws, space)
    names = list(grp.index)
    targets = [n for n in names if not sel_groups or grp[n] in sel_groups]
    pools = A.random_pools(names, size=int(pool), seed=int(pool_seed)) if pool else None
    scores = {m: mats[m][targets] for m in methods}
except Exception as exc:
    show_error(exc, "Could not build the score matrices")
    st.stop()

gains, gains_note = None, ""
gp = os.path.expanduser(gains_path.strip())
if gp and os.path.isfile(gp):
    try:
        gains = V.read_gains(gp, names)
        if gains.empty:
            gains, gains_note = None, f"`{gp}` holds no gains for the tasks of this signature space (names must match)."
    except Exception as exc:
        gains, gains_note = None, f"`{gp}` could not be used: {exc}"
else:
    gains_note = (f"No ground-truth transfer results at `{gp}`: per-group accuracy is shown once the benchmark has "
                  "written them (head-only adaptation gains, see DESIGN.md §5), or point the field above at a file.")

try:
    rep = A.audit(scores, groups=grp, gains=None, pools=pools,
                  reference="joint", baseline="activation")
except Exception as exc:
    show_error(exc, "The audit failed")
    st.stop()

m1, m2, m3 = st.columns(3)
m1.metric("Targets", len(targets))
m2.metric("Candidate sources per target", int(pool) if pool else len(names) - 1)
if rep.disagreement is not None:
    m3.metric("ρ_F vs ρ_h disagree on", f"{100 * rep.disagreement:.0f}% of targets")
else:
    m3.metric("ρ_F vs ρ_h disagree on", "–", help="Select both ρ_F and ρ_h to compare them.")

st.subheader("Concentration of the picks")
conc = rep.concentration.assign(method=lambda d: d["method"].map(V.BY_LABELS))
st.dataframe(conc, hide_index=True, key="audit_concentration")
plotly(V.fig_hubness({m: rep.hubness[m]["source"] for m in methods}), key="audit_hubness")
plotly(V.fig_group_share({m: rep.hubness[m]["group"] for m in methods}), key="audit_group_share")
with st.expander("Hubness tables"):
    for m in methods:
        st.markdown(f"**{V.BY_LABELS[m]}**")
        st.dataframe(rep.hubness[m]["source"].head(20), hide_index=True, key=f"audit_hub_{m}")
if rep.disagreeing_targets is not None and len(rep.disagreeing_targets):
    st.subheader("Targets where ρ_F and ρ_h pick different sources")
    st.dataframe(rep.disagreeing_targets.rename(columns={"chosen_a": "ρ_F picks", "chosen_b": "ρ_h picks"}),
                 hide_index=True, key="audit_disagree")

st.subheader("Accuracy per group (ground truth)")
if gains is None:
    st.info(gains_note)
else:
    try:
        acc = {}
        for m in methods:
            ch = rep.choices[m]
            ch = ch[ch["target"].isin(gains.columns)]
            acc[m] = A.accuracy_by_group(ch, gains, pools=pools, groups=grp)
        table = pd.concat([df.assign(method=V.BY_LABELS[m]) for m, df in acc.items()], ignore_index=True)
        st.dataframe(table, hide_index=True, key="audit_accuracy")
        plotly(V.fig_accuracy(pd.concat([df.assign(method=m) for m, df in acc.items()], ignore_index=True)),
               key="audit_accuracy_chart")
    except Exception as exc:
        show_error(exc, f"Ground truth in {gp} cannot score these choices")
st.download_button("Download the choices (CSV)",
                   pd.concat([rep.choices[m].assign(method=m) for m in methods]).to_csv(index=False).encode(),
                   file_name="audit-choices.csv", mime="text/csv", key="audit_download")
