"""Kronecker δ: how far each task's head Fisher is from the K-FAC product A ⊗ G."""
from __future__ import annotations

import streamlit as st

from fishersketch_core import views as V
from pages._ui import page_params, bind, plotly, require_tasks, show_error, space_select, sync, workspace

st.title("Kronecker δ")
page_params("form", "groups")
st.caption("δ_T = ‖F_T − A_T⊗G_T‖ / ‖F_T‖ per task (U form: every index distinct, the unbiased estimate the paper "
           "relies on; the V form from sample moments is biased far upward). δ = 0 is K-FAC independence.")


ws = workspace()
if not require_tasks(ws):
    st.stop()
space = space_select(ws)
meta = ws.tasks_in(space)
groups = sorted(meta["group"].unique())
bind("delta_form", "form", "U", lambda v: V.parse_choice(v, ["U", "V"], "U"))
bind("delta_groups", "groups", [], lambda v: V.parse_list(v, groups), many=True, options=groups)
c1, c2 = st.columns([1, 3])
form = c1.radio("Form", ["U", "V"], key="delta_form", horizontal=True,
                help="U: unbiased (default). V: sample moments, biased upward for small tasks.")
sel_groups = c2.multiselect("Groups (empty = all)", groups, key="delta_groups")
sync("delta_form", "form", form, "U")
sync("delta_groups", "groups", sel_groups, [])

try:
    df = ws.delta(space, form)
except Exception as exc:
    show_error(exc, "Computing δ failed")
    st.stop()
if sel_groups:
    df = df[df["group"].isin(sel_groups)].reset_index(drop=True)
if df.empty:
    st.info("No task has a δ in this selection (the U form needs positions in both halves of a task).")
    st.stop()

n_excl = int((df["lo"] > 0).sum())
m1, m2, m3 = st.columns(3)
m1.metric("Tasks", len(df))
m2.metric("Median δ", f"{df['delta'].median():.3f}")
m3.metric("95% interval excludes 0", f"{n_excl} / {len(df)}")
st.markdown(f"In **{n_excl} of {len(df)}** tasks the {form}-form δ is significantly above 0: the head Fisher is "
            "*not* the Kronecker product of its activation and error moments there, so ρ_h·ρ_e mispredicts ρ_F.")
st.caption("The intervals are the sketch's error for the task's own positions. Drawing other positions from the same "
           "corpus adds sampling noise of a similar size for small δ (tests/test_sketch.py measures both), so read "
           "δ below about 0.1 as 'close to Kronecker', not as a proof that δ ≠ 0.")
plotly(V.fig_delta(df), key="delta_chart")
st.subheader("By group and model")
st.dataframe(V.delta_by_group(df), hide_index=True, key="delta_groups_table")
with st.expander("Per-task table"):
    st.dataframe(df, hide_index=True, key="delta_table")
    st.download_button("Download δ per task (CSV)", df.to_csv(index=False).encode(), file_name="delta.csv",
                       mime="text/csv", key="delta_download")

st.subheader("ρ_F against the Kronecker prediction ρ_h·ρ_e")
try:
    pairs = ws.pairs(space, form)
except Exception as exc:
    show_error(exc, "Pairwise alignments failed")
    st.stop()
if sel_groups:
    keep = set(df["label"])
    pairs = pairs[pairs["a"].isin(keep) & pairs["b"].isin(keep)]
if pairs.empty:
    st.info("A scatter needs at least two tasks.")
    st.stop()
dev = (pairs["rho_F"] - pairs["kronecker"])
st.caption(f"{len(pairs)} pairs · mean ρ_F − ρ_h·ρ_e = {dev.mean():+.3f} · {100 * (dev > 0).mean():.0f}% of pairs lie "
           "above the diagonal (coupling adds alignment), the rest below.")
plotly(V.fig_kronecker_scatter(pairs), key="delta_scatter")
