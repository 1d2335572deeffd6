"""`sweep ui` and `sweep dashboard`: the MLflow UI and optuna-dashboard on this project's stores, stopped
with the command that started them (Ctrl-C or SIGTERM), nothing left behind."""

from __future__ import annotations

import sys
import threading
import webbrowser
from pathlib import Path

from sweep import storage
from sweep.context import CommandError, Options, prepare_store
from sweep.credentials import mask_url
from sweep.processes import interruptible, serve
from sweep.tracking import study_url


def run_ui(options: Options, study_name: str, port: int) -> int:
    """Serve the MLflow UI, printing the link that opens `study_name`'s runs."""
    if options.tracking_uri is None:
        prepare_store(options.store)  # MLflow's SQLite file goes there
    uri = options.tracking
    link = study_url(uri, study_name, f"http://127.0.0.1:{port}")
    print(f"MLflow UI for {mask_url(uri)}: open {link} (Ctrl-C to stop)", flush=True)
    return serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)])


def run_dashboard(store_path: Path, storage_url: str | None, study_name: str, port: int, open_page: bool = False) -> int:
    """Serve optuna-dashboard on the study storage, in this process, printing (and with `open_page` opening)
    the address of `study_name`'s own page."""
    try:
        import optuna_dashboard
    except ImportError:
        raise CommandError("optuna-dashboard is not installed; install it with pip install 'mnist-sweep[dashboard]' "
                           "(from a checkout: pip install -e '.[dashboard]')") from None
    opened = storage.open_storage(storage_url, store_path)
    try:
        study_id = opened.get_study_id_from_name(study_name)
    except KeyError:
        raise CommandError(f"no study named {study_name!r} in {mask_url(storage_url) if storage_url else store_path}; "
                           "pass --name with a stored study, or run `sweep run` first") from None
    link = f"http://127.0.0.1:{port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard for study {study_name!r}: open {link} (Ctrl-C to stop)", flush=True)
    if open_page:  # once the server below is listening
        threading.Timer(1.0, webbrowser.open, (link,)).start()
    with interruptible():  # served in this process: stopping it leaves nothing behind
        try:
            optuna_dashboard.run_server(opened, host="127.0.0.1", port=port)
        except KeyboardInterrupt:
            return 130
    return 0
