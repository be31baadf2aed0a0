"""A Rucio client with nothing registered, for tests of the checks before Rucio (tests/integration has the real
server)."""


class NoRucio:
    def list_dids(self, *a, **k):
        return []

    def get_metadata_bulk(self, *a, **k):
        return []

    def bulk_list_files(self, *a, **k):
        return []

    def list_replicas(self, *a, **k):
        return []
