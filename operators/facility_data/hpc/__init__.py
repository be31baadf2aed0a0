"""Where a job script runs: NERSC (Slurm via the SFAPI), ALCF (Globus Compute), or LOCAL (bash on this machine,
the embedded default). The same rendered job script (include/jobs/) runs on each; OLCF is not supported.

    controller = get_controller(HPC.LOCAL)
    result = controller.run_job(render_job("healthcheck.slurm.j2", job_name="hc"), job_name="hc",
                                deadline_seconds=600)
"""

from __future__ import annotations

import enum

from facility_data.hpc.base import HPCController, JobFailed, JobResult
from facility_data.hpc.jobs import render_job


class HPC(enum.StrEnum):
    NERSC = "nersc"
    ALCF = "alcf"
    LOCAL = "local"
    OLCF = "olcf"


def get_controller(hpc: HPC | str, **kwargs) -> HPCController:
    """The controller for ``hpc``. kwargs: NERSC - conn_id, machine, poll_interval; ALCF - conn_id, endpoint_id;
    LOCAL - workdir."""
    try:
        hpc = HPC(str(hpc).lower())
    except ValueError:
        raise ValueError(f"unknown HPC {hpc!r}: choose one of {', '.join(h.value for h in HPC)}") from None
    if hpc is HPC.LOCAL:
        from facility_data.hpc.local import LocalController

        return LocalController(**kwargs)
    if hpc is HPC.NERSC:
        from facility_data.hpc.nersc import NERSCController

        return NERSCController(**kwargs)
    if hpc is HPC.ALCF:
        from facility_data.hpc.alcf import ALCFController

        return ALCFController(**kwargs)
    raise NotImplementedError("OLCF is not supported: there is no OLCF job controller (the seed's was a stub); "
                              "use NERSC, ALCF or LOCAL")


__all__ = ["HPC", "HPCController", "JobFailed", "JobResult", "get_controller", "render_job"]
