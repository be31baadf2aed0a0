"""The embedded demo and synthetic data: imported by ``make demo``, the benches and the tests, never by product code.

* ``run``             ``make demo`` (``python -m facility_data.demo.run``): the main jobs end to end under Airflow;
* ``als``             the ALS part of the demo: a synthetic scan where the file watcher would see it, and a summary;
* ``als_synthetic``   synthetic BL 8.3.2 tomography scans (Data Exchange HDF5) with a known ground truth;
* ``rubin_synthetic`` a synthetic LSSTCam night in real SQLite Butlers and a real embargo store;
* ``rubin_breakage``  damage a few unembargoed exposures the way a crash would, for reconcile to find and repair.

tests/unit/test_import_layout.py fails if a product module imports this package.
"""
