"""Overview: what is loaded, the idea in three sentences, and where to go next."""
from __future__ import annotations

import streamlit as st

from fishersketch_core import views as V
from pages._ui import page_params, base_store_problem, plotly, workspace

st.title("FisherSketch Studio")
page_params()
st.markdown(
    "**The idea.** Fine-tuning a model's output head on a source corpus helps a target corpus when the two produce "
    "similar head gradients, so FisherSketch compares tasks by their head Fisher information — activations *h* and "
    "errors *e* jointly — rather than by activations alone, which look alike for every corpus in scientific "
    "string domains (SMILES, proteins, DNA). Head Fisher alignment ρ_F is exactly a cosine between kernel mean "
    "embeddings in the joint activation-error space, estimated in one streaming pass by a 16 KiB signature per task "
    "(m = 4096 random Maclaurin features) with a standard error. It factors as ρ_F = ρ_h · ρ_e · κ, which says "
    "whether two tasks are alike through their activations, their errors, or the coupling between the two (κ = 1 "
    "is the Kronecker/K-FAC assumption, which the Kronecker δ page tests per task).")

ws = workspace()
if ws is None:
    st.stop()

problem = base_store_problem(ws)
if problem:
    st.error(problem)

tasks = ws.tasks()
spaces = ws.spaces()
c1, c2, c3, c4 = st.columns(4)
c1.metric("Tasks", len(tasks))
c2.metric("Groups", tasks["group"].nunique() if len(tasks) else 0)
c3.metric("Models / sketch settings", len(spaces))
c4.metric("Stores open", sum(s.ok for s in ws.statuses()))

st.subheader("Stores")
for s in ws.statuses():
    name = "Signature store (read-only)" if s.role == "base" else "Your store (computed and imported signatures)"
    if s.ok:
        st.success(f"**{name}** — `{s.path}`: {s.n_tasks} task{'s' if s.n_tasks != 1 else ''}")
    elif s.role == "user" and "not created yet" in s.message:
        st.info(f"**{name}** — `{s.path}`: {s.message}")
    elif s.role == "user":
        st.error(f"**{name}** — `{s.path}` could not be opened: {s.message}")
    else:
        st.error(f"**{name}** — `{s.path}`: not open.")
with st.expander("How the stores work"):
    st.markdown(
        "- The **signature store** (default `data/demo.duckdb`: SmolLM2-135M signatures of the 119 bundled "
        "domains; change it in the sidebar or with `$FISHERSKETCH_STORE`) is opened **read-only** and never "
        "written, so other readers (the CLI's `rank`, `list`, `export`) can use it at the same time.\n"
        "- Signatures you **compute or import** go to **your store** (default "
        "`~/.cache/fishersketch/user.duckdb`, or `$FISHERSKETCH_USER_STORE`). The app opens it read-write only "
        "for the moment of a write, in one transaction, so a failed write changes nothing.\n"
        "- Every page shows the tasks of **both stores together** (a task's `store` column says where it lives). "
        "Signatures are compared only within one **signature space** — the same model weights, method, m and "
        "seed; pick it in the sidebar when there are several.")

if len(tasks):
    st.subheader("What is loaded")
    show = spaces.rename(columns={"n_tasks": "tasks"})[["space", "tasks", "model_id", "method", "m", "seed"]]
    st.dataframe(show, hide_index=True, key="overview_spaces")
    left, right = st.columns([3, 2])
    with left:
        plotly(V.fig_group_counts(tasks), key="overview_groups")
    with right:
        per_group = tasks.groupby("group").agg(tasks=("uid", "size"), median_delta=("delta_u", "median"))
        st.dataframe(per_group.reset_index(), hide_index=True, key="overview_group_table")
    st.caption("Methods compared on the pages: FisherSketch ρ_F (U form, same-position pairs dropped, the default; "
               "V form available), activation-only ρ_h, error-only ρ_e and the Kronecker (K-FAC) product ρ_h·ρ_e.")

st.subheader("Where to go next")
cols = st.columns(3)
links = [("pages/ranking.py", "Source ranking", "which source to fine-tune on for a target"),
         ("pages/decomposition.py", "Decomposition", "where a pair's similarity comes from"),
         ("pages/delta.py", "Kronecker δ", "how far each task is from K-FAC independence"),
         ("pages/task_map.py", "Task map", "UMAP / PCA of the signatures and nearest neighbours"),
         ("pages/audit.py", "Bias audit", "which sources and groups selection favours"),
         ("pages/signatures.py", "Signatures", "compute, import or export signatures")]
for i, (page, label, what) in enumerate(links):
    with cols[i % 3]:
        st.page_link(page, label=label)
        st.caption(what)
