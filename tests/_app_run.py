"""Runs for the index and app tests: a small dataset (tests/_dataset_factory.py), a small
untrained model saved as a real checkpoint, a CLIP comparison run, WFDB and CSV uploads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb
from _dataset_factory import write_dataset

from models import ModelConfig, build_model
from preprocessing.layout import MIMIC_ECG_LEADS
from symile_clinical.formats.checkpoint import save_checkpoint
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.run_config import TrainConfig
from symile_clinical.formats.run_dir import RunDir

N_LABS = 6


def small_model_config() -> ModelConfig:
    """A model small enough to build and run in well under a second on a CPU."""
    return ModelConfig(
        embed_dim=16,
        ecg_channels=(4, 8),
        ecg_blocks=(1, 1),
        ecg_stem_stride=8,
        norm="group",
        n_labs=N_LABS,
        labs_hidden=(16,),
        cxr_arch="resnet10",
        cxr_size=32,
    )


def make_run(run_dir: Path, data_dir: Path, objective: str = "symile", seed: int = 0) -> Path:
    """A run's config and best checkpoint, of an untrained model over `data_dir`."""
    config = TrainConfig(model=small_model_config(), objective=objective, seed=seed)
    model = build_model(config.model, seed=seed)
    run = RunDir(run_dir)
    save_checkpoint(run.best_checkpoint, {"model": model.state_dict()})
    run.write_config(config, DatasetDir(data_dir))
    return run_dir


def make_runs(root: Path, n_test: int = 24) -> tuple[Path, Path, Path]:
    """(dataset, Symile run with compare.json naming the CLIP run, CLIP run)."""
    data = write_dataset(
        root / "data", n_train=8, n_val=8, n_test=n_test, n_labs=N_LABS, cxr_size=32
    )
    symile = make_run(root / "symile", data, "symile")
    clip = make_run(root / "clip", data, "clip", seed=1)
    RunDir(symile).write_comparisons([("CLIP", clip)])
    return data, symile, clip


def write_wfdb(
    folder: Path, name: str = "upload", leads: tuple[str, ...] = MIMIC_ECG_LEADS
) -> tuple[Path, Path]:
    """A 10 s, 500 Hz WFDB record (format 16, MIMIC-IV-ECG's lead order); (.hea, .dat)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    t = np.arange(5000) / 500
    beats = np.exp(-(((t % 0.8) - 0.4) ** 2) / 0.0005)  # one R wave every 0.8 s
    signal = np.stack([beats * (0.5 + 0.1 * i) for i in range(len(leads))], axis=1)
    signal += rng.normal(0, 0.02, signal.shape)
    wfdb.wrsamp(
        name,
        fs=500,
        units=["mV"] * len(leads),
        sig_name=list(leads),
        p_signal=signal,
        fmt=["16"] * len(leads),
        adc_gain=[200.0] * len(leads),
        baseline=[0] * len(leads),
        write_dir=str(folder),
    )
    return folder / f"{name}.hea", folder / f"{name}.dat"


def labs_csv(rows: list[tuple[str, str]], key: str = "itemid") -> bytes:
    """A labs CSV with columns key, value."""
    lines = [f"{key},value", *(f"{k},{v}" for k, v in rows)]
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------------
# A real app server and a websocket client that speaks Streamlit's protocol


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server, timeout_s: float = 120) -> float:
    """Poll URL/_stcore/health until it answers ok; seconds waited. The server's exit or
    the timeout is an error."""
    import time
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if server.poll() is not None:
            raise RuntimeError(f"the app server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url}/_stcore/health did not answer ok within {timeout_s} s")


def start_server(command: list[str], log_path: Path, cwd: Path | None = None, env=None):
    """Start an app server process (its output to log_path); stop it with stop_server."""
    import subprocess

    log = log_path.open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
    )
    process.log_file = log
    return process


def stop_server(process) -> None:
    """Terminate a server started by start_server (kill after 20 s)."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.log_file.close()


class StreamlitSession:
    """One browser-less session: a websocket to /_stcore/stream speaking Streamlit's
    protobuf messages, as the browser does (rerun requests in, deltas out)."""

    def __init__(self, url: str, host: str | None = None, timeout_s: float = 120) -> None:
        """Connect to the app at `url`; `host` is the Host header to send (default: the
        url's), as a browser sends the name it was given for the address it reached."""
        import socket
        from urllib.parse import urlsplit

        from websockets.sync.client import connect

        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        self.timeout_s = timeout_s
        try:
            self.socket = connect(
                f"ws://{host or parts.netloc}/_stcore/stream",
                sock=sock,
                subprotocols=["streamlit"],
                open_timeout=timeout_s,
                max_size=None,
            )
        except BaseException:
            sock.close()
            raise
        self.widgets: dict[str, dict] = {}  # label -> {"id", "kind", "options"}

    def close(self) -> None:
        """Close the websocket."""
        self.socket.close()

    def rerun(self, values: dict[str, object] | None = None, page: str = "") -> list:
        """Ask for a script run with widget values by label (selectbox/radio: the option
        string), on `page` (its URL name, '' = the default page); returns the new elements
        once the run has finished."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        message = BackMsg()
        state = message.rerun_script
        state.SetInParent()  # an empty ClientState must still be sent as one
        state.page_name = page
        for label, value in (values or {}).items():
            widget = self.widgets[label]
            entry = state.widget_states.widgets.add()
            entry.id = widget["id"]
            if isinstance(value, str):
                entry.string_value = value
            else:
                entry.int_value = int(value)
        self.socket.send(message.SerializeToString())
        elements = []
        while True:
            forward = ForwardMsg()
            forward.ParseFromString(self.socket.recv(timeout=self.timeout_s))
            kind = forward.WhichOneof("type")
            if kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
                element = forward.delta.new_element
                elements.append(element)
                widget_kind = element.WhichOneof("type")
                if widget_kind in ("selectbox", "radio"):
                    widget = getattr(element, widget_kind)
                    self.widgets[widget.label] = {
                        "id": widget.id,
                        "kind": widget_kind,
                        "options": list(widget.options),
                    }
            elif kind == "script_finished":
                status = ForwardMsg.ScriptFinishedStatus.Name(forward.script_finished)
                if status in ("FINISHED_SUCCESSFULLY", "FINISHED_EARLY_FOR_RERUN"):
                    if status == "FINISHED_SUCCESSFULLY":
                        return elements
                    elements = []
                else:
                    raise RuntimeError(f"script run ended with {status}")
            elif kind == "session_event" and forward.session_event.WhichOneof("type") == (
                "script_compilation_exception"
            ):
                raise RuntimeError("the app script failed to compile")


def element_texts(elements: list) -> list[str]:
    """Markdown bodies and image captions of elements."""
    texts = []
    for element in elements:
        kind = element.WhichOneof("type")
        if kind == "markdown":
            texts.append(element.markdown.body)
        elif kind == "imgs":
            texts += [image.caption for image in element.imgs.imgs]
        elif kind == "alert":
            texts.append(element.alert.body)
    return texts


def result_captions(elements: list) -> list[str]:
    """Captions of result thumbnails (those carrying a score)."""
    return [t for t in element_texts(elements) if " · score " in t]
