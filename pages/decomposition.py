"""Decomposition: ρ_F = ρ_h · ρ_e · κ with standard errors for a target and its sources."""
from __future__ import annotations

import streamlit as st

from fishersketch_core import align
from fishersketch_core import views as V
from pages._ui import page_params, bind, plotly, require_tasks, show_error, space_select, sync, workspace

st.title("Decomposition")
page_params("target", "form", "sources")
st.caption("ρ_F (joint, FisherSketch) = ρ_h (activation) · ρ_e (error) · κ (coupling), each with its sketching "
           "standard error. κ = 1 is the Kronecker (K-FAC) prediction.")

ws = workspace()
if not require_tasks(ws, 2):
    st.stop()
space = space_select(ws)
meta = ws.tasks_in(space)
labels = meta["label"].tolist()
uid_of = dict(zip(meta["label"], meta["uid"]))
if len(labels) < 2:
    st.info("This signature space has a single task; a decomposition needs a target and at least one source.")
    st.stop()

bind("dec_target", "target", labels[0], lambda v: V.parse_choice(v, labels, labels[0]), options=labels)
bind("dec_form", "form", "U", lambda v: V.parse_choice(v, ["U", "V"], "U"))
c1, c2 = st.columns([3, 1])
target = c1.selectbox("Target task", labels, key="dec_target")
form = c2.radio("Self-norm form", ["U", "V"], key="dec_form", horizontal=True,
                help="U: same-position pairs dropped (default, unbiased); V: kept.")
others = [lab for lab in labels if lab != target]


def _default_sources() -> list[str]:
    try:
        top = ws.rank(uid_of[target], k=5, by="joint", form=form, with_se=False)
        return [lab for lab in top["label"] if lab in others]
    except Exception:  # fall back to the first few tasks
        return others[:5]


bind("dec_sources", "sources", [], lambda v: V.parse_list(v, others), many=True, options=others)
if not st.session_state["dec_sources"]:
    st.session_state["dec_sources"] = _default_sources()
sources = st.multiselect("Sources (default: the 5 best by ρ_F)", others, key="dec_sources", max_selections=30)
sync("dec_target", "target", target, labels[0])
sync("dec_form", "form", form, "U")
sync("dec_sources", "sources", sources, [])
if not sources:
    st.info("Pick at least one source.")
    st.stop()

try:
    sigs = ws.signatures([uid_of[target]] + [uid_of[s] for s in sources])
    table = V.decomposition_table(sigs[0], sigs[1:], sources, form=form)
except Exception as exc:
    show_error(exc, "Decomposition failed")
    st.stop()

st.markdown(f"**Where the similarity comes from.** {V.summarise_sources(table)}")
best = table.sort_values("rho_F", ascending=False).iloc[0]
st.info(f"**{best['source']} → {target}:** {best['explanation']}")
plotly(V.fig_pair_bars(table, target), key="dec_bars")
st.dataframe(table.rename(columns={"rho_F": "ρ_F", "rho_F_se": "SE ρ_F", "rho_h": "ρ_h", "rho_h_se": "SE ρ_h",
                                   "rho_e": "ρ_e", "rho_e_se": "SE ρ_e", "kappa": "κ", "kappa_se": "SE κ",
                                   "kronecker": "ρ_h·ρ_e"}),
             hide_index=True, key="dec_table",
             column_config={"explanation": st.column_config.TextColumn(width="large")})

st.subheader("Over the set (target and sources)")
names = [target] + list(sources)
try:
    mats = align.alignment_matrix(sigs, form=form)
except Exception as exc:
    show_error(exc, "Heatmaps failed")
    st.stop()
tabs = st.tabs(["ρ_F joint", "ρ_h activation", "ρ_e error", "κ coupling"])
for tab, (fam, title) in zip(tabs, (("joint", "ρ_F"), ("activation", "ρ_h"), ("error", "ρ_e"), ("coupling", "κ"))):
    with tab:
        plotly(V.fig_heatmap(mats[fam], names, f"{title} over the set ({form} form)",
                             zmid=1.0 if fam == "coupling" else None,
                             zrange=(0.0, 2.0) if fam == "coupling" else None), key=f"dec_heat_{fam}")
st.download_button("Download the pair table (CSV)", table.assign(target=target).to_csv(index=False).encode(),
                   file_name=f"decomposition-{V._slug(target)}.csv", mime="text/csv", key="dec_download")
