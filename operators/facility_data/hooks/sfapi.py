"""SFAPIHook: NERSC Superfacility API client (sfapi_client) from an Airflow connection (type ``sfapi``).

Connection: login = client id, password = the client's private key (a JWK as JSON, or PEM), host = API base URL
(defaults to NERSC's; tests point it at a local server), extra ``token_url`` (defaults to NERSC's OIDC endpoint).
Tokens are client-credentials tokens the client renews when they expire; a 401 from the API (a token revoked or
expired early) rebuilds the client once with a fresh token. Nothing secret is logged.

Job states: :data:`SUCCESS_STATE` is the only success; :data:`FAILURE_STATES` fail the task with the job's
accounting record; anything else is still pending.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from airflow.sdk import BaseHook

from facility_data.masking import mask_url

log = logging.getLogger(__name__)

SUCCESS_STATE = "COMPLETED"
FAILURE_STATES = frozenset({"FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                            "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"})
ACCOUNTING_FIELDS = ("jobid", "jobname", "state", "exitcode", "derivedexitcode", "elapsed", "timelimit", "submit",
                     "start", "end", "nodelist", "reason", "maxrss", "account", "qos", "partition")


class JobNotFound(LookupError):
    """The job is not (yet) known to Slurm accounting."""


def job_outcome(state: str | None) -> str:
    """"success", "failed" or "pending" for a Slurm state ("CANCELLED by 123" counts as CANCELLED)."""
    base = (state or "").split(" ")[0].upper()
    if base == SUCCESS_STATE:
        return "success"
    if base in FAILURE_STATES:
        return "failed"
    return "pending"


def job_event(hook: SFAPIHook, jobid: str, machine: str, *, first_seen: float, not_found_grace: float) -> dict:
    """One look at a job as an event payload: status success / failed / pending, with its accounting record.

    Shared by the sensor (poke), its trigger and the NERSC HPC controller, so it lives with the client here: a
    trigger must not import the sensor that defers to it."""
    try:
        info = hook.job_info(jobid, machine=machine)
    except JobNotFound:
        waited = time.time() - first_seen
        if waited > not_found_grace:
            return {"status": "failed", "jobid": jobid, "job": {},
                    "message": f"Slurm job {jobid} on {machine} still unknown to accounting after {waited:.0f} s"}
        return {"status": "pending", "jobid": jobid, "job": {}, "message": "not in accounting yet"}
    outcome = job_outcome(info.get("state"))
    summary = ", ".join(f"{k}={v}" for k, v in info.items() if k != "jobid")
    message = f"Slurm job {jobid} on {machine}: {summary}" if outcome != "pending" else str(info.get("state"))
    return {"status": outcome, "jobid": jobid, "job": info, "message": message}


class SFAPIHook(BaseHook):
    conn_name_attr = "sfapi_conn_id"
    default_conn_name = "sfapi_default"
    conn_type = "sfapi"
    hook_name = "NERSC Superfacility API"

    def __init__(self, sfapi_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sfapi_conn_id = sfapi_conn_id
        self._client = None

    # -- client ---------------------------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        from sfapi_client._sync.client import SFAPI_BASE_URL, SFAPI_TOKEN_URL

        conn = self.get_connection(self.sfapi_conn_id)
        if not conn.login or not conn.password:
            raise ValueError(f"SFAPI connection {self.sfapi_conn_id!r} needs login (client id) and password "
                             "(private key, JWK JSON or PEM)")
        key: Any = conn.password.strip()
        if key.startswith("{"):
            key = json.loads(key)  # a JWK: authlib signs the client assertion with it as a dict
        for url in (conn.host, conn.extra_dejson.get("token_url")):  # a token in a URL must not reach the logs
            mask_url(url)
        base_url = (conn.host or SFAPI_BASE_URL).rstrip("/")
        if conn.host and "://" not in conn.host:
            base_url = f"https://{base_url}"
        return {"client_id": conn.login, "secret": key, "api_base_url": base_url,
                "token_url": conn.extra_dejson.get("token_url") or SFAPI_TOKEN_URL}

    def get_client(self):
        if self._client is None:
            from sfapi_client import Client

            self._client = Client(**self._client_kwargs())
        return self._client

    def reset(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _call(self, fn):
        """Run ``fn(client)``; on 401 drop the client (and its token) and try once more."""
        import httpx

        try:
            return fn(self.get_client())
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 401:
                raise
            log.warning("SFAPI answered 401 (token expired or revoked); fetching a new token and retrying")
            self.reset()
            return fn(self.get_client())

    def compute(self, client, machine: str):
        from sfapi_client.compute import Machine

        return client.compute(Machine(machine))

    # -- jobs -----------------------------------------------------------------------------------------------
    def submit_job(self, script: str, *, machine: str = "perlmutter") -> str:
        if not script.startswith("#!"):
            raise ValueError("a batch script must start with '#!' (it is sent as text, not as a remote path)")
        job = self._call(lambda c: self.compute(c, machine).submit_job(script))
        log.info("submitted Slurm job %s on %s", job.jobid, machine)
        return str(job.jobid)

    def job_info(self, jobid: str, *, machine: str = "perlmutter") -> dict[str, Any]:
        """The job's sacct record (accounting fields); raises JobNotFound when Slurm does not know it yet."""
        from sfapi_client import SfApiError
        from sfapi_client.jobs import JobCommand

        def fetch(c):
            return self.compute(c, machine).job(jobid=jobid, command=JobCommand.sacct)

        try:
            job = self._call(fetch)
        except SfApiError as exc:
            if "not found" in str(exc).lower():
                raise JobNotFound(f"job {jobid} not found on {machine}") from exc
            raise
        data = job.model_dump(exclude={"compute"})
        info = {k: data.get(k) for k in ACCOUNTING_FIELDS if data.get(k) not in (None, "")}
        state = data.get("state")
        info["state"] = getattr(state, "value", state)
        return info

    def find_active_job(self, name: str, *, machine: str = "perlmutter") -> dict[str, Any] | None:
        """A queued or running job of this user named ``name`` (squeue), if any."""
        from sfapi_client.jobs import JobCommand

        def fetch(c):
            user = c.user().name
            return self.compute(c, machine).jobs(user=user, command=JobCommand.squeue)

        for job in self._call(fetch):
            if getattr(job, "name", None) == name:
                state = getattr(job, "state", None)
                return {"jobid": str(job.jobid), "state": getattr(state, "value", state)}
        return None

    def cancel_job(self, jobid: str, *, machine: str = "perlmutter") -> None:
        self._call(lambda c: c.delete(f"compute/jobs/{machine}/{jobid}"))
        log.warning("cancelled Slurm job %s on %s", jobid, machine)

    def test_connection(self) -> tuple[bool, str]:
        try:
            user = self._call(lambda c: c.user())
            return True, f"SFAPI token accepted (user {user.name})"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            self.reset()
