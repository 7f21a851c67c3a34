"""The same pipeline on Ray Data: the fields to do become a Ray Dataset, ``map_batches`` runs decoding and the
pipeline in a pool of actors (each builds the models once; GPU actors on request), and the driver
(``pipelines.run.run``) streams the results into the same ``fields.jsonl``, crops, reports and summary as the local
engine. Nothing of the per-batch work is Ray's own: an actor calls ``pipelines.run.process_batch``, as the local
engine does.

Ray is imported only here, and only when ``--engine ray`` is asked for. Without ``address`` Ray starts in-process
with this machine's resources (``ray.init``); with one (``ray start --head`` printed it) the driver joins that
cluster, whose workers need this project installed (``pip install -e .``) and the input paths readable.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from core.config import REPO_ROOT
from core.offline import set_offline
from pipelines.inputs import FieldInput
from pipelines.pipeline import Pipeline, load_pipeline_config
from pipelines.results import field_from_dict, to_json
from pipelines.run import RunOptions, decode_field, process_batch


class _CollectSink:
    """Records an actor's ``sink.add`` calls so that the driver writes the crops (``_CropSink``) itself."""

    def __init__(self):
        self.calls: dict[str, list] = {}

    def add(self, smear, field_id, i, label, crop, cam=None):
        self.calls.setdefault(field_id, []).append((smear, field_id, i, label, crop, cam))


class PipelineActor:
    """A Ray Data actor: the models of one pipeline config, built once; a batch of field inputs in, one JSON record
    and the pickled crops per field out."""

    def __init__(self, config: str, device: str, half: bool, opts: RunOptions):
        set_offline()
        self.pipeline = Pipeline(load_pipeline_config(config), device=device, half=half, log=lambda m: None)
        self.opts = opts

    def __call__(self, batch: dict) -> dict:
        fields = [FieldInput(Path(p), s, f) for p, s, f in zip(batch["path"], batch["smear_id"], batch["field_id"])]
        sink = _CollectSink()
        results = process_batch(fields, [decode_field(f) for f in fields], self.pipeline, self.opts, sink)
        return {"record": np.array([to_json(r) for r in results], dtype=object),
                "crops": np.array([pickle.dumps(sink.calls.get(r.field_id, [])) for r in results], dtype=object)}


def start_ray(address: str | None = None, log=print):
    """Connect to the cluster at ``address``, or start Ray in-process with this machine's CPUs (and GPUs)."""
    import ray

    if ray.is_initialized():
        return ray
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                        "YOLO_OFFLINE": "1", "FIFTYONE_DO_NOT_TRACK": "true"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=env, log_to_driver=False,
                 configure_logging=False)
    log(f"ray: {ray.cluster_resources()}")
    return ray


def ray_engine(config: str, opts: RunOptions, device: str = "cpu", half: bool = False, address: str | None = None,
               workers: int = 1, gpus_per_worker: float = 0.0, log=print):
    """An engine for ``pipelines.run.run``: ``engine(todo, sink)`` yields ``(fields, FieldResults)`` per batch as
    the actors finish them (order is not kept), after replaying each field's crops into the driver's ``sink``."""

    def engine(todo: list[FieldInput], sink):
        if not todo:
            return
        ray = start_ray(address, log)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"path": str(f.path), "smear_id": f.smear_id, "field_id": f.field_id}
                                  for f in todo], override_num_blocks=max(1, min(len(todo) // max(1, opts.batch),
                                                                                 200)))
        by_id = {f.field_id: f for f in todo}
        out = ds.map_batches(PipelineActor, fn_constructor_kwargs={"config": str(config), "device": device,
                                                                   "half": half, "opts": opts},
                             batch_size=opts.batch, batch_format="numpy", concurrency=workers,
                             num_cpus=max(1.0, (os.cpu_count() or 1) / max(1, workers)) if not address else 1,
                             num_gpus=gpus_per_worker or None)
        for b in out.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            results = [field_from_dict(json.loads(r)) for r in b["record"]]
            for blob in b["crops"]:
                for call in pickle.loads(blob):
                    sink.add(*call)
            yield [by_id[r.field_id] for r in results], results

    engine.name = f"ray ({'cluster ' + address if address else 'in-process'}, {workers} worker(s)" + \
        (f", {gpus_per_worker:g} GPU each)" if gpus_per_worker else ")")
    return engine
