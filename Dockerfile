# Airflow image for a production-like deployment: the official image plus the pinned lock and this bundle's
# operator package (the triggerer and the UI need it installed, not just mounted).
FROM apache/airflow:3.3.2-python3.11
USER airflow
COPY --chown=airflow:root requirements.lock pyproject.toml README.md /opt/facility/
COPY --chown=airflow:root operators /opt/facility/operators
RUN pip install --no-cache-dir -r /opt/facility/requirements.lock \
 && pip install --no-cache-dir --no-deps /opt/facility
