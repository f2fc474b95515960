"""Streamlit glue shared by the pages: the cached workspace, query-parameter binding, error boxes.

Everything that computes lives in :mod:`fishersketch_core.views`; this module only draws.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import streamlit as st

from fishersketch_core import views as V
from fishersketch_core.signature import IncompatibleSignatures
from fishersketch_core.store import StoreError, StoreLockedError

KEEP = "_keep_"


# --- workspace ---------------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False)
def _workspace(store_path: str, user_path: str) -> V.Workspace:
    """One Workspace (read-only store connections + matrix memo) per pair of paths, per process."""
    ws = V.Workspace(store_path, user_path or None)
    ws.start_warming()  # ρ matrices and δ of the main space, so the first page visits are quick
    return ws


def store_paths() -> tuple[str, str]:
    """The base and user store paths of this session (sidebar), defaulting to the environment."""
    ss = st.session_state
    if "store_path" not in ss:
        ss["store_path"] = ss.get(KEEP + "store_path", str(V.default_store_path()))
    if "user_path" not in ss:
        ss["user_path"] = ss.get(KEEP + "user_path", str(V.default_user_store_path()))
    return ss["store_path"], ss["user_path"]


def workspace() -> V.Workspace | None:
    """The session's workspace (refreshed if a store file appeared or changed), or None with an error shown."""
    base, user = store_paths()
    try:
        ws = _workspace(os.path.expanduser(base.strip()), os.path.expanduser(user.strip()))
    except ValueError as exc:
        st.error(str(exc))
        return None
    before = ws.version
    ws.refresh()
    if ws.version != before:  # a store appeared or changed on disk: recompute in the background
        ws.start_warming()
    return ws


def store_sidebar() -> None:
    """Sidebar: which stores are open, their state, and a reload button."""
    store_paths()
    with st.sidebar.expander("Stores", expanded=False):
        st.text_input("Signature store (opened read-only)", key="store_path",
                      help="A DuckDB store of signatures. Default: data/demo.duckdb or $FISHERSKETCH_STORE.")
        st.text_input("Your store (computed and imported signatures go here)", key="user_path",
                      help="Created on first write. Default: ~/.cache/fishersketch/user.duckdb or "
                           "$FISHERSKETCH_USER_STORE. It must not be the signature store above.")
        st.session_state[KEEP + "store_path"] = st.session_state["store_path"]
        st.session_state[KEEP + "user_path"] = st.session_state["user_path"]
        if st.button("Reload stores", key="reload_stores"):
            ws = workspace()
            if ws is not None:
                for h in ws.handles.values():
                    h.open()
    ws = workspace()
    if ws is None:
        return
    for s in ws.statuses():
        label = "signature store" if s.role == "base" else "your store"
        if s.ok:
            st.sidebar.caption(f":material/check_circle: {label}: {s.n_tasks} task{'s' if s.n_tasks != 1 else ''} "
                               f"· `{s.path}`")
        elif s.role == "user" and not os.path.exists(s.path):
            st.sidebar.caption(f":material/add_circle: {label}: {s.message}")
        else:
            st.sidebar.caption(f":material/error: {label}: not open (see Overview)")


def base_store_problem(ws: V.Workspace) -> str | None:
    """A message (with the fix) when the base store could not be opened, else None."""
    h = ws.handles["base"]
    if h.ok:
        return None
    if not h.path.exists():
        return (f"The signature store `{h.path}` does not exist. Fix: if this is the bundled demo store, it is "
                "built with `python -m fishersketch_core` (see README) and may still be computing; or point the "
                "sidebar's *Stores → Signature store* (or `$FISHERSKETCH_STORE`) at another `.duckdb` store; "
                "or compute and import signatures on the **Signatures** page (they go to your store).")
    return f"The signature store `{h.path}` could not be opened: {h.error}"


# --- choosing a signature space ------------------------------------------------------------------------------

def require_tasks(ws: V.Workspace | None, min_tasks: int = 1) -> bool:
    """Show why a page cannot work yet (missing store, no tasks) and return False; True when usable."""
    if ws is None:
        return False
    if len(ws.tasks()) >= min_tasks:
        problem = base_store_problem(ws)
        if problem:
            st.warning(problem)
        return True
    problem = base_store_problem(ws)
    if problem:
        st.error(problem)
    else:
        st.info("No signatures yet. Compute or import some on the **Signatures** page.")
    return False


def space_select(ws: V.Workspace) -> str:
    """Sidebar selector of the signature space (model + sketch settings); bound to ?space=."""
    spaces = ws.spaces()
    options = spaces["space"].tolist()
    counts = dict(zip(spaces["space"], spaces["n_tasks"]))
    bind("space", "space", options[0], lambda v: V.parse_choice(v, options, options[0]), options=options)
    if len(options) > 1:
        st.sidebar.selectbox("Signature space", options, key="space",
                             format_func=lambda s: f"{s} ({counts[s]} tasks)",
                             help="Signatures are compared only within one model and sketch setting.")
    value = st.session_state["space"]
    sync("space", "space", value, default=options[0])
    if len(options) == 1:
        st.sidebar.caption(f"Signature space: {value} ({counts[value]} tasks)")
    return value


# --- query parameters ------------------------------------------------------------------------------------------

def bind(key: str, qp: str, default: Any, parse: Callable[[Any], Any], *, many: bool = False,
         options: Sequence[Any] | None = None) -> None:
    """Initialise widget ``key`` before it is drawn: from ``?qp=``, else this session's last value, else default.

    With ``options``, a value (or list items) not among them is replaced by the default.
    """
    ss = st.session_state
    if key not in ss:
        raw = st.query_params.get_all(qp) if many else st.query_params.get(qp)
        if raw:
            ss[key] = parse(raw)
        elif KEEP + key in ss:
            ss[key] = ss[KEEP + key]
        else:
            ss[key] = default
    if options is not None:
        opts = list(options)
        if many:
            ss[key] = [v for v in ss[key] if v in opts]
        elif ss[key] not in opts:
            ss[key] = default


def page_params(*allowed: str) -> None:
    """Drop query parameters that belong to other pages (so a shared URL carries only this page's state)."""
    for qp in list(st.query_params.keys()):
        if qp not in allowed and qp != "space":
            del st.query_params[qp]


def sync(key: str, qp: str, value: Any, default: Any = None) -> None:
    """Remember ``value`` for this session and write it to the URL (``?qp=``) unless it is the default."""
    st.session_state[KEEP + key] = value
    empty = value is None or value == default or (isinstance(value, (list, tuple)) and not value)
    if empty:
        if qp in st.query_params:
            del st.query_params[qp]
        return
    new = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
    current = st.query_params.get_all(qp) if isinstance(new, list) else st.query_params.get(qp)
    if current != new:
        st.query_params[qp] = new


# --- errors ----------------------------------------------------------------------------------------------------

def show_error(exc: BaseException, what: str = "") -> None:
    """An in-page error naming the problem and the fix (never a traceback)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, StoreLockedError):
        st.error(f"{prefix}the store is locked. {exc}")
    elif isinstance(exc, IncompatibleSignatures):
        st.error(f"{prefix}{exc}")
    elif isinstance(exc, (StoreError, ValueError, KeyError, FileNotFoundError)):
        st.error(f"{prefix}{exc.args[0] if exc.args else exc}")
    else:
        st.error(f"{prefix}{type(exc).__name__}: {exc}. Fix: check the inputs above; if it persists, report it "
                 "with this message.")


class Timer:
    """Context manager that records a wall time in ``st.session_state[key]`` (shown as a caption)."""

    def __init__(self, key: str):
        self.key = key

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        st.session_state[self.key] = time.perf_counter() - self.t0


def plotly(fig: Any, key: str, **kw: Any) -> Any:
    """Draw a plotly figure (offline: no CDN, no mode bar logo)."""
    return st.plotly_chart(fig, key=key, config={"displaylogo": False}, **kw)
