"""Signatures: browse and export the stored tasks, import signature files, compute new signatures."""
from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path

import streamlit as st

from fishersketch_core import views as V
from pages._ui import page_params, base_store_problem, show_error, workspace

st.title("Signatures")
page_params()

ws = workspace()
if ws is None:
    st.stop()
problem = base_store_problem(ws)
if problem:
    st.warning(problem)


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[str, V.ComputeJob]:
    """Compute jobs of this process, by id (they outlive a page switch)."""
    return {}


@st.cache_resource(show_spinner=False)
def _domains():
    from fishersketch_core.data import list_domains
    return list_domains()[["domain", "group", "description", "tokens_probe"]]


def _open_store(path: str) -> None:
    st.session_state["store_path"] = path


tab_tasks, tab_import, tab_compute = st.tabs(["Stored tasks", "Import / open", "Compute"])

# --- stored tasks ---------------------------------------------------------------------------------------------
with tab_tasks:
    tasks = ws.tasks()
    if tasks.empty:
        st.info("No signatures are loaded yet: import a file or compute one in the other tabs.")
    else:
        groups = sorted(tasks["group"].unique())
        sel_groups = st.multiselect("Groups (empty = all)", groups, key="sig_groups")
        shown = tasks[tasks["group"].isin(sel_groups)] if sel_groups else tasks
        cols = ["label", "group", "store", "model_id", "method", "m", "seed", "n_positions", "delta_u", "delta_u_se",
                "task_type", "corpus_source", "created_at"]
        st.dataframe(shown[cols], hide_index=True, key="sig_table",
                     column_config={"delta_u": st.column_config.NumberColumn("δ (U)", format="%.3f"),
                                    "delta_u_se": st.column_config.NumberColumn("SE δ", format="%.3f")})
        st.caption(f"{len(shown)} of {len(tasks)} tasks shown.")
        st.markdown("**Export**")
        all_shown = st.checkbox("Export every task shown above", key="sig_export_all")
        chosen = shown["label"].tolist() if all_shown else st.multiselect(
            "Tasks to export", shown["label"].tolist(), key="sig_export")
        uids = tasks.set_index("label").loc[chosen, "uid"].tolist() if chosen else []
        c1, c2 = st.columns(2)
        c1.download_button("Download as Parquet", data=lambda: ws.export_parquet_bytes(uids),
                           file_name="signatures.parquet", mime="application/octet-stream", disabled=not uids,
                           key="sig_dl_parquet", help="One row per task (metadata + vectors); importable anywhere.")
        npz_name = (f"{V._slug(chosen[0])}.npz" if len(chosen) == 1 else "signatures.zip")
        c2.download_button("Download as .npz" if len(chosen) == 1 else "Download as .zip of .npz",
                           data=lambda: ws.export_npz_bytes(uids)[0], file_name=npz_name,
                           mime="application/octet-stream", disabled=not uids, key="sig_dl_npz")
        user_tasks = tasks[tasks["store"] == "user"]["label"].tolist()
        if user_tasks:
            with st.expander("Delete a task from your store"):
                victim = st.selectbox("Task", user_tasks, key="sig_delete_task")
                if st.button("Delete", key="sig_delete"):
                    try:
                        ws.delete(tasks.set_index("label").loc[victim, "uid"])
                        st.success(f"Deleted {victim} from your store.")
                        st.rerun()
                    except Exception as exc:
                        show_error(exc, "Delete failed")

# --- import ------------------------------------------------------------------------------------------------
with tab_import:
    st.markdown("Upload signature files to add them to **your store** "
                f"(`{ws.user_path}`); the signature store is never written.")
    up = st.file_uploader("Signature file (.parquet export, .npz signature, .zip of .npz, .duckdb store)",
                          type=["parquet", "npz", "zip", "duckdb"], key="sig_upload")
    if up is not None:
        try:
            records = V.read_upload(up.name, up.getvalue())
        except V.UploadError as exc:
            st.error(f"{exc}")
            records = None
        if records:
            st.success(f"{up.name}: {len(records)} valid signature(s).")
            st.dataframe(V.records_summary(records), hide_index=True, key="sig_upload_preview")
            for w in V.check_records_against(records, ws):
                st.warning(w)
            on_conflict = st.radio("If a task with the same name, model and settings is already stored",
                                   ["error", "skip", "replace"], horizontal=True, key="sig_on_conflict",
                                   format_func={"error": "refuse the import", "skip": "keep the stored one",
                                                "replace": "replace it"}.get)
            if st.button("Add to your store", type="primary", key="sig_import"):
                try:
                    report = ws.import_records(records, on_conflict=on_conflict)
                    st.success(f"Imported into {ws.user_path}: {report}")
                except Exception as exc:
                    show_error(exc, "Import refused, nothing was written")
    st.divider()
    st.markdown("**Open another store** as the (read-only) signature store")
    other = st.text_input("Path of a .duckdb store", key="sig_other_store", placeholder="/path/to/signatures.duckdb")
    st.button("Open it", key="sig_open_store", on_click=_open_store, args=(other.strip(),), disabled=not other.strip())

# --- compute ---------------------------------------------------------------------------------------------
with tab_compute:
    st.markdown("Compute a FisherSketch signature of a corpus with a model; the result goes to **your store** and "
                "appears on every page.")
    spaces = ws.spaces()
    dm, ds, dmeth = (4096, 0, "fast")
    if len(spaces):
        dm, ds, dmeth = int(spaces["m"].iloc[0]), int(spaces["seed"].iloc[0]), str(spaces["method"].iloc[0])
    c1, c2 = st.columns(2)
    with c1:
        model_kind = st.radio("Model", ["default", "local"], key="cmp_model_kind", horizontal=True,
                              format_func={"default": "SmolLM2-135M-Instruct (default)",
                                           "local": "Local model path"}.get)
        model_path = st.text_input("Local Hugging Face folder or .gguf file", key="cmp_model_path",
                                   disabled=model_kind == "default", placeholder="/path/to/model")
        corpus = st.radio("Corpus", ["domain", "file"], key="cmp_corpus", horizontal=True,
                          format_func={"domain": "Bundled domain", "file": "Upload a file"}.get)
    domain, data_path, text_col, prompt_col, target_col, task_type = "", "", None, None, None, "corpus"
    dom_group = "user"
    with c2:
        if corpus == "domain":
            try:
                doms = _domains()
                domain = st.selectbox("Bundled domain", doms["domain"].tolist(), key="cmp_domain")
                row = doms.set_index("domain").loc[domain]
                dom_group = str(row["group"])
                st.caption(f"{row['description']} · {int(row['tokens_probe']):,} probe tokens")
            except Exception as exc:
                show_error(exc, "The bundled domains cannot be listed")
        else:
            data = st.file_uploader("Text, FASTA, SMILES, CSV/TSV or JSONL", key="cmp_upload",
                                    type=["txt", "text", "md", "fa", "fasta", "faa", "fna", "smi", "smiles", "csv",
                                          "tsv", "jsonl", "gz"])
            if data is not None:
                digest = hashlib.sha256(data.getvalue()).hexdigest()[:16]
                folder = Path(tempfile.gettempdir()) / "fishersketch-uploads" / digest
                folder.mkdir(parents=True, exist_ok=True)
                data_path = str(folder / Path(data.name).name)
                if not os.path.exists(data_path):
                    Path(data_path).write_bytes(data.getvalue())
            task_type = st.radio("Task type", ["corpus", "prompt-target"], key="cmp_task_type", horizontal=True,
                                 help="corpus: every next-token position; prompt-target: only the target tokens.")
            fmt = Path(data_path).name.lower().removesuffix(".gz").rsplit(".", 1)[-1] if data_path else ""
            if fmt in ("csv", "tsv", "jsonl"):
                if task_type == "corpus" and fmt != "smi":
                    text_col = st.text_input("Text column / key", key="cmp_text_col") or None
                else:
                    prompt_col = st.text_input("Prompt column / key", key="cmp_prompt_col") or None
                    target_col = st.text_input("Target column / key", key="cmp_target_col") or None
    c3, c4, c5 = st.columns(3)
    default_name = domain if corpus == "domain" else (Path(data_path).stem if data_path else "")
    for key, default in (("cmp_name", default_name), ("cmp_group", dom_group)):
        if st.session_state.get(f"_{key}_default") != default:  # a new corpus: suggest its name and group
            st.session_state[key] = default
            st.session_state[f"_{key}_default"] = default
    name = c3.text_input("Task name", key="cmp_name")
    group = c4.text_input("Group", key="cmp_group")
    budget = c5.number_input("Position budget (0 = all)", min_value=0, value=2000, step=500, key="cmp_budget")
    with st.expander("Sketch settings (defaults match the open signature store, so results are comparable)"):
        s1, s2, s3, s4 = st.columns(4)
        m = s1.number_input("m (features)", min_value=16, max_value=65536, value=dm, step=256, key="cmp_m")
        seed = s2.number_input("Seed", min_value=0, value=ds, step=1, key="cmp_seed")
        method = s3.selectbox("Method", ["fast", "dense"], index=0 if dmeth == "fast" else 1, key="cmp_method")
        device = s4.selectbox("Device", ["auto", "cpu", "cuda"], key="cmp_device")

    jobs = _jobs()
    job = jobs.get(st.session_state.get("cmp_job", ""))
    busy = job is not None and job.running
    if st.button("Compute signature", type="primary", key="cmp_start", disabled=busy):
        req = V.ComputeRequest(name=name.strip(), model="smollm2" if model_kind == "default" else model_path.strip(),
                               corpus=corpus, domain=domain, data_path=data_path, task_type=task_type,
                               text_column=text_col, prompt_column=prompt_col, target_column=target_col,
                               max_positions=int(budget) or None, m=int(m), seed=int(seed), method=method,
                               group=group.strip(), device=device)
        try:
            req.validate()
            req.build_task()  # reading/format errors show here, before any model is loaded
        except Exception as exc:
            show_error(exc, "Cannot start")
        else:
            jid = uuid.uuid4().hex
            jobs[jid] = V.ComputeJob(ws, req).start()
            st.session_state["cmp_job"] = jid
            st.session_state["cmp_job_seen"] = False
            job, busy = jobs[jid], True

    def _panel() -> None:
        j = _jobs().get(st.session_state.get("cmp_job", ""))
        if j is None:
            return
        label = {"starting": "Starting", "loading model": "Loading the model", "running": "Computing",
                 "writing": "Writing to your store", "done": "Done", "cancelled": "Cancelled", "failed": "Failed"}
        st.progress(min(max(j.fraction, 0.0), 1.0),
                    text=f"{label.get(j.state, j.state)} · {j.request.name} · {100 * j.fraction:.0f}%"
                         + (f" · {j.detail}" if j.detail else ""))
        if j.running:
            st.button("Cancel", key="cmp_cancel", on_click=j.cancel)
            return
        if j.state == "done":
            st.success(f"Signature computed: {j.request.name} ({j.signature.n_positions:,} positions, perplexity "
                       f"{j.perplexity:.2f}) — {j.report}. It is in your store and on every page now.")
        elif j.state == "cancelled":
            st.warning(f"Cancelled: {j.request.name}. Nothing was written.")
        elif j.state == "failed":
            st.error(f"Computing {j.request.name} failed: {j.error}")
        if not st.session_state.get("cmp_job_seen", True):
            st.session_state["cmp_job_seen"] = True
            st.rerun(scope="app")  # refresh the task lists everywhere

    st.fragment(_panel, run_every=0.5 if busy else None)()
