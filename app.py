"""FisherSketch Studio: the Streamlit front end.

Run with ``./setup.sh app`` (or ``python -m streamlit run app.py``). The pages live in ``pages/`` and stay
thin; everything they compute comes from ``fishersketch_core`` (``fishersketch_core.views`` for the app's
tables and figures).
"""
from __future__ import annotations

import streamlit as st

from pages._ui import store_sidebar

# no page_icon: a material-icon favicon would be fetched from fonts.gstatic.com (the app runs offline)
st.set_page_config(page_title="FisherSketch Studio", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/signatures.py", title="Signatures", icon=":material/fingerprint:", url_path="signatures"),
    st.Page("pages/decomposition.py", title="Decomposition", icon=":material/stacked_bar_chart:", url_path="decomposition"),
    st.Page("pages/delta.py", title="Kronecker δ", icon=":material/grid_on:", url_path="delta"),
    st.Page("pages/task_map.py", title="Task map", icon=":material/scatter_plot:", url_path="task-map"),
    st.Page("pages/ranking.py", title="Source ranking", icon=":material/leaderboard:", url_path="ranking"),
    st.Page("pages/audit.py", title="Bias audit", icon=":material/balance:", url_path="audit"),
]

nav = st.navigation(PAGES)
store_sidebar()
nav.run()
