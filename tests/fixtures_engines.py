"""Engine fixtures: one Dask cluster and one Spark session shared by the whole test session."""
