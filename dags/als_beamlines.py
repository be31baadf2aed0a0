"""ALS beamline Airflow DAGs, generated from include/beamlines/*.yaml by facility_data.als.dags.

bl832_new_file, bl832_recon_local, bl832_recon_nersc, bl832_recon_alcf, bl832_prune, bl832_prune_preview;
bl7012_new_file, bl733_new_file (and their prune sweeps and previews). Edit the YAML, not this file.
"""

from facility_data.als.dags import build_all
from facility_data.placement import place

globals().update({name: place(dag) for name, dag in build_all().items()})
