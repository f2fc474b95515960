"""Source ranking: a target's ranked sources (SQL over the stores), beside an activation-only ranking."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from fishersketch_core import views as V
from pages._ui import page_params, bind, require_tasks, show_error, space_select, sync, workspace

st.title("Source ranking")
page_params("target", "k", "vs", "groups", "form")
st.caption("Which stored source to fine-tune on for a target: ranked by FisherSketch ρ_F in DuckDB, beside a "
           "baseline ranking. Rows where the two disagree are highlighted.")

ws = workspace()
if not require_tasks(ws, 2):
    st.stop()
space = space_select(ws)
meta = ws.tasks_in(space)
labels = meta["label"].tolist()
uid_of = dict(zip(meta["label"], meta["uid"]))
if len(labels) < 2:
    st.info("This signature space has a single task; a ranking needs at least one candidate source.")
    st.stop()

groups = sorted(meta["group"].unique())
bind("rank_target", "target", labels[0], lambda v: V.parse_choice(v, labels, labels[0]), options=labels)
bind("rank_k", "k", 10, lambda v: V.parse_int(v, 10, 1, 100))
bind("rank_vs", "vs", "activation", lambda v: V.parse_choice(v, ["activation", "error", "kronecker"], "activation"))
bind("rank_groups", "groups", [], lambda v: V.parse_list(v, groups), many=True, options=groups)
bind("rank_form", "form", "U", lambda v: V.parse_choice(v, ["U", "V"], "U"))

c1, c2, c3 = st.columns([3, 1, 2])
target = c1.selectbox("Target task", labels, key="rank_target")
k = c2.number_input("Top k", min_value=1, max_value=100, step=1, key="rank_k")
vs = c3.radio("Compare with", ["activation", "error", "kronecker"], key="rank_vs", horizontal=True,
              format_func=lambda b: V.BY_LABELS[b])
c4, c5 = st.columns([3, 2])
cand_groups = c4.multiselect("Candidate groups (empty = all)", groups, key="rank_groups")
form = c5.radio("Self-norm form", ["U", "V"], key="rank_form", horizontal=True,
                help="U drops same-position pairs from the self-norms (unbiased, default); V keeps them.")
for key, qp, default in (("rank_target", "target", labels[0]), ("rank_k", "k", 10), ("rank_vs", "vs", "activation"),
                         ("rank_groups", "groups", []), ("rank_form", "form", "U")):
    sync(key, qp, st.session_state[key], default)

try:
    view = V.ranking_view(ws, uid_of[target], k=int(k), baseline=vs, form=form, groups=cand_groups)
except Exception as exc:  # locked / incompatible / unknown target: say so in the page
    show_error(exc, "Ranking failed")
    st.stop()
if view.table.empty:
    st.info("No candidate source matches the filters. Widen the candidate groups.")
    st.stop()
table, summary, top_b, elapsed = view.table, view.summary, view.baseline_top, view.seconds

m1, m2, m3, m4 = st.columns(4)
m1.metric("FisherSketch top-1", summary["primary_top1"])
m2.metric(f"{V.BY_LABELS[vs].split(' ')[0]} top-1", summary["baseline_top1"],
          delta="agrees" if summary["top1_agree"] else "disagrees",
          delta_color="normal" if summary["top1_agree"] else "inverse")
m3.metric(f"Overlap of the top {int(k)}", f"{summary['overlap']} / {min(int(k), summary['n_candidates'])}")
m4.metric("Spearman of the two rankings", f"{summary['spearman']:.2f}")
st.caption(f"{summary['n_candidates']} candidate sources · ranked in {elapsed:.2f} s")

show = pd.DataFrame({
    "rank ρ_F": table["rank"], "source": table["label"], "group": table["group"], "store": table["store"],
    "ρ_F": table["rho_F"], "± SE": table["rho_F_se"], "ρ_h": table["rho_h"], "ρ_e": table["rho_e"],
    "κ": table["kappa"], "ρ_h·ρ_e": table["kronecker"], f"rank {V.BY_LABELS[vs].split(' ')[0]}": table["baseline_rank"],
    "disagree": table["disagree"]})
left, right = st.columns([3, 2])
with left:
    st.subheader(f"Ranked by {V.BY_LABELS['joint']}")
    styled = show.style.apply(lambda r: ["background-color: #ffe3b3" if r["disagree"] else "" for _ in r], axis=1) \
        .format({"ρ_F": "{:.3f}", "± SE": "{:.3f}", "ρ_h": "{:.3f}", "ρ_e": "{:.3f}", "κ": "{:.3f}",
                 "ρ_h·ρ_e": "{:.3f}"}, na_rep="–")
    st.dataframe(styled, hide_index=True, key="rank_table")
with right:
    st.subheader(f"Ranked by {V.BY_LABELS[vs]}")
    in_f = set(table.loc[table["rank"] <= int(k), "uid"])
    score_col = {"activation": "rho_h", "error": "rho_e", "kronecker": "kronecker"}[vs]
    bshow = pd.DataFrame({"rank": top_b["rank"], "source": top_b["label"], "group": top_b["group"],
                          "score": top_b[score_col], "in ρ_F top k": top_b["uid"].isin(in_f)})
    bstyled = bshow.style.apply(lambda r: ["" if r["in ρ_F top k"] else "background-color: #ffe3b3" for _ in r],
                                axis=1).format({"score": "{:.3f}"})
    st.dataframe(bstyled, hide_index=True, key="rank_baseline_table")

export = view.export
st.download_button("Download the full ranking (CSV)", export.to_csv(index=False).encode(),
                   file_name=f"ranking-{V._slug(target)}.csv", mime="text/csv", key="rank_download")
st.session_state["rank_seconds"] = elapsed
