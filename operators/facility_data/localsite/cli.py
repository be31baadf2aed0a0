"""`facility-site up|down|clean|status|env|airflow-init|airflow|edge-worker`: the local site from the command line.

`edge-worker` (with FACILITY_EXECUTOR=edge) runs one edge worker in the foreground: --name, --queues and --workdir
say which site it stands for."""

from __future__ import annotations

import argparse
import os
import sys

from facility_data.localsite import SERVICES, Site, SiteError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="facility-site", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "clean", "status", "env", "airflow-init", "airflow",
                                                   "edge-worker"])
    parser.add_argument("--services", default=",".join(SERVICES), help="comma-separated subset of " + ",".join(SERVICES))
    parser.add_argument("--name", help="edge-worker: the worker's name (its hostname in the task instances)")
    parser.add_argument("--queues", help="edge-worker: comma-separated queues it serves (include/placement.yaml)")
    parser.add_argument("--workdir", help="edge-worker: its working directory (AIRFLOW_HOME, logs)")
    args = parser.parse_args(argv)
    site = Site.from_env()
    try:
        if args.command == "up":
            started = site.up([s for s in args.services.split(",") if s])
            print(f"local site {site.root}: started {', '.join(started) or 'nothing (already up)'}")
            _print_ports(site)
        elif args.command == "down":
            stopped = site.down()
            print(f"local site {site.root}: stopped {', '.join(stopped) or 'nothing (was not running)'}")
        elif args.command == "clean":
            site.remove()
            print(f"local site {site.root}: stopped and removed, with its PostgreSQL directory {site.postgres.root}")
        elif args.command == "status":
            status = site.status()
            for name, ok in status.items():
                print(f"{name:9} {'up' if ok else 'down'}")
            return 0 if all(status.values()) else 1
        elif args.command == "env":
            for key, value in site.env().items():
                if "PASSWORD" not in key:
                    print(f"export {key}={value}")
        elif args.command == "airflow-init":
            from facility_data.localsite.airflow_home import init

            print(f"Airflow home ready: {init(site)}")
        elif args.command == "airflow":
            from facility_data.localsite.airflow_home import EDGE_EXECUTOR, AirflowServer, airflow_env, init

            init(site)
            env = airflow_env(site)
            print(f"Airflow UI on http://127.0.0.1:{env['AIRFLOW__API__PORT']} (admin password in "
                  f"{env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated)", flush=True)
            if env.get("AIRFLOW__CORE__EXECUTOR") == EDGE_EXECUTOR:  # standalone would force LocalExecutor
                import time

                server = AirflowServer(site)
                server.start()
                print(f"Airflow with the EdgeExecutor is up (log {server.log}); edge workers connect to "
                      f"{env['AIRFLOW__EDGE__API_URL']}; Ctrl-C stops it", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    server.stop()
                return 0
            os.execvpe(sys.executable, [sys.executable, "-m", "airflow", "standalone"], env)
        elif args.command == "edge-worker":
            from pathlib import Path

            from facility_data.localsite.airflow_home import EDGE_EXECUTOR, EdgeWorker, airflow_env

            if not (args.name and args.queues and args.workdir):
                raise SiteError("edge-worker needs --name, --queues and --workdir")
            env = airflow_env(site)
            if env.get("AIRFLOW__CORE__EXECUTOR") != EDGE_EXECUTOR:
                raise SiteError("edge-worker needs FACILITY_EXECUTOR=edge (the central site's EdgeExecutor)")
            worker = EdgeWorker(env, args.name, [q for q in args.queues.split(",") if q], Path(args.workdir))
            os.chdir(worker.workdir)
            os.execvpe(sys.executable, worker.command(), worker.env)
    except SiteError as exc:
        print(f"facility-site {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_ports(site: Site) -> None:
    print(f"  PostgreSQL  127.0.0.1:{site.state['ports']['postgres']}  (cluster in {site.postgres.root})")
    print(f"  Rucio       {site.rucio_url}  (account root)")
    print(f"  S3 API      {site.s3_url}")
    print(f"  SciCat      {site.scicat_url}  (stand-in, account {site.scicat_user})")
    print(f"  Airflow UI  http://127.0.0.1:{site.state['ports']['airflow']} (make airflow)")


if __name__ == "__main__":
    sys.exit(main())
